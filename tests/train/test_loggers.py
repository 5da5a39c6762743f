"""Metric sinks (`run.loggers`, issue 15): TensorBoard events read back with the tensorboard package
equal metrics.jsonl, W&B runs offline and keeps one run id across `--resume auto`, one line on stderr
says where metrics go, other ranks write nothing, a missing package exits 2 with the install hint."""
import shutil
import sys

import pytest

from elastic_cli.train import loggers
from elastic_cli.config import load_config
from elastic_cli.errors import UsageError
from elastic_cli.train.loop import train
from tests.helpers import tiny_run


def interrupted_then_resumed(data, run_dir, loggers_value):
    """Train 4 steps (checkpoints at 2 and 4), drop the step-4 checkpoint as if stopped after step 3,
    then `--resume auto` (steps 3 and 4 again)."""
    args = tiny_run.overrides(data, run_dir, "train.save_every=2", "train.steps=4", f"run.loggers={loggers_value}")
    train(load_config("recipes/tiny.yaml", args))
    shutil.rmtree(run_dir / "checkpoints" / "step_00000004")
    train(load_config("recipes/tiny.yaml", args), resume="auto")


@pytest.mark.slow
def test_tensorboard_events_equal_metrics_jsonl_after_resume(tiny_corpus, tmp_path, capsys):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    interrupted_then_resumed(tiny_corpus, run, "[jsonl,tensorboard]")
    err = capsys.readouterr().err
    where = [line for line in err.splitlines() if line.startswith("metrics: ")]
    assert where == [f"metrics: {run}/metrics.jsonl, TensorBoard {run}/tensorboard "
                     f"(tensorboard --logdir {run}/tensorboard)"] * 2
    records = tiny_run.metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # the resumed run dropped the first run's rows 3-4
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert {"loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= set(acc.Tags()["scalars"])
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [1, 2, 3, 4]  # the resumed run purged steps 3-4 of the first
    final = {r["step"]: r for r in records}
    assert [e.value for e in events] == pytest.approx([final[s]["loss"] for s in (1, 2, 3, 4)], rel=1e-6)
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([final[s]["lr"] for s in (1, 2, 3, 4)], rel=1e-6)
    args = tiny_run.overrides(tiny_corpus, run, "train.save_every=2", "train.steps=4", "train.log_every=2",
                              "run.loggers=[tensorboard]")  # the same configuration: --overwrite may replace it
    train(load_config("recipes/tiny.yaml", args), overwrite=True)  # starting over removes the old events
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [2, 4] and not (run / "metrics.jsonl").exists()


def wandb_history(path) -> list[dict]:
    """The logged rows of an offline W&B run file (`run-ID.wandb`): a 7-byte header, then records in the
    LevelDB log format (32 KiB blocks; each chunk: crc32, length u16 LE, type 1 full/2 first/3 middle/4 last),
    each a `wandb_internal_pb2.Record`."""
    import json

    from wandb.proto import wandb_internal_pb2

    blob, pos, records, part = path.read_bytes(), 7, [], b""
    assert blob[:4] == b":W&B"
    while pos + 7 <= len(blob):
        left = 32768 - pos % 32768
        n, kind = int.from_bytes(blob[pos + 4 : pos + 6], "little"), blob[pos + 6]
        if left < 7 or kind == 0:  # block trailer / padding
            pos += left
            continue
        chunk, pos = blob[pos + 7 : pos + 7 + n], pos + 7 + n
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            records.append(part)
    rows = []
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.mark.slow
def test_wandb_offline_keeps_one_run_id_across_resume(tiny_corpus, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    run = tmp_path / "run"
    interrupted_then_resumed(tiny_corpus, run, "[wandb]")
    run_id = (run / "state" / "wandb_run_id").read_text().strip()
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("metrics: ")] == \
        [f"metrics: W&B run {run_id} (offline, {run}/wandb)"] * 2
    assert "wandb:" not in err  # silent
    offline = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 2 and not (run / "metrics.jsonl").exists()
    first, second = (wandb_history(d / f"run-{run_id}.wandb") for d in offline)
    assert [r["_step"] for r in first] == [1, 2, 3, 4] and [r["_step"] for r in second] == [3, 4]
    assert [r["loss"] for r in second] == [r["loss"] for r in first[2:]]  # the exact resume redoes steps 3-4


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    sinks = loggers.open_metrics(["jsonl", "tensorboard"], tmp_path, 0, {})
    sinks.write({"step": 1, "loss": 1.0})
    sinks.close()
    assert sinks.sinks == [] and list(tmp_path.iterdir()) == []


def test_missing_logger_package_is_usage_error_with_hint(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config("recipes/tiny.yaml",
                      tiny_run.overrides(tiny_corpus, tmp_path / "run", "run.loggers=[jsonl,wandb]"))
    with pytest.raises(UsageError, match=r"pip install 'elastic-cli\[wandb\]'"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_loggers_key_is_checked():
    with pytest.raises(UsageError, match="run.loggers"):
        load_config("recipes/tiny.yaml", ["run.loggers=[jsonl,mlflow]"])
