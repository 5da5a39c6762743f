"""`train.parallel=fsdp` (FSDP2, checkpoints through torch.distributed.checkpoint): 2 gloo processes
train like DDP (weights within 1e-5 after 10 steps, `none` and `elastic`), SIGTERM at step 5 -> exit 75
-> `--resume auto` on one process ends where the uninterrupted run does, every memory kind trains like
one process, checkpoints load across formats (optimizer.pt / dcp) and process counts (1 -> 2 -> 1),
`elastic eval` reads an FSDP checkpoint, and the dry run reports per-process memory for both modes."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ddp_kinds, tiny_run
from tests.helpers.cli_run import run_cli
from elastic_cli.build import build_model, describe, state_bytes
from elastic_cli.config import load_config
from elastic_cli.errors import DataError, UsageError
from elastic_cli.runs import checkpoint, inference
from elastic_cli.train import fsdp, loop, preflight
from elastic_cli.train.optim import parameter_names

PREEMPT = Path(__file__).parent / "preempt"  # sitecustomize: SIGTERM to the launcher at step N (ELASTIC_TEST_SIGTERM_AT)
BAR = ("train.steps=10", "train.micro_batch=1")  # 2 processes x 2 micro-batches of 1 window, 2 BPTT chunks each
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tiny_corpus):
    return tiny_corpus


def kind_args(kind: str) -> list[str]:
    return [] if kind == "elastic" else [f"recipes/memory/{kind}.yaml", f"memory.kind={kind}"]


def command(data: Path, run_dir: Path, *extra: str, gpus: int = 2) -> list[str]:
    return [sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml",
            *tiny_run.overrides(data, run_dir, *extra), *(["--gpus", str(gpus)] if gpus > 1 else [])]


def launch(data: Path, run_dir: Path, *extra: str, gpus: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(data, run_dir, *extra, gpus=gpus), cwd=tiny_run.ROOT, env=env or tiny_run.env(),
                          capture_output=True, text=True, timeout=300)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.resolve(run_dir) / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def fsdp_elastic(data, tmp_path_factory):
    """The uninterrupted run of the bar: elastic, 2 processes, train.parallel=fsdp, 10 steps."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "elastic"
    proc = launch(data, run_dir, *BAR, "train.parallel=fsdp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "elastic"])
def test_two_processes_fsdp_weights_equal_ddp(kind, data, fsdp_elastic, tmp_path):
    runs = {"ddp": tmp_path / "ddp", "fsdp": fsdp_elastic if kind == "elastic" else tmp_path / "fsdp"}
    for mode, run_dir in runs.items():
        if not run_dir.exists():
            proc = launch(data, run_dir, *BAR, f"train.parallel={mode}", *kind_args(kind))
            assert proc.returncode == 0, proc.stderr[-4000:]
            assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    diff = max_difference(weights(runs["fsdp"]), weights(runs["ddp"]))
    print(f"{kind}: max |w_fsdp - w_ddp| after 10 steps = {diff:.3g}")
    assert diff <= 1e-5, diff
    ddp_loss, fsdp_loss = ([m["loss"] for m in tiny_run.metrics(runs[m])] for m in ("ddp", "fsdp"))
    assert len(fsdp_loss) == 10
    torch.testing.assert_close(fsdp_loss, ddp_loss, rtol=1e-5, atol=0)

    ckpt = checkpoint.resolve(runs["fsdp"])  # the layout: dcp/ from both ranks instead of optimizer.pt
    names = sorted(p.name for p in ckpt.iterdir())
    assert "optimizer.pt" not in names and {"dcp", "model.safetensors", "train_state.json", "COMPLETE"} <= set(names)
    shards = sorted(p.name for p in (ckpt / "dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    recorded = json.loads((ckpt / "COMPLETE").read_text())["sha256"]
    assert {f"dcp/{s}" for s in shards} <= recorded.keys()
    assert "parallel=fsdp" in (runs["fsdp"] / "train.log").read_text()


@pytest.mark.slow
def test_sigterm_at_step_5_exits_75_and_one_process_resumes_to_the_same_weights(data, fsdp_elastic, tmp_path):
    run_dir = tmp_path / "run"
    env = tiny_run.env()
    env["PYTHONPATH"] = f"{PREEMPT}{os.pathsep}{env['PYTHONPATH']}"
    env["ELASTIC_TEST_SIGTERM_AT"] = "5"
    stopped = launch(data, run_dir, *BAR, "train.parallel=fsdp", env=env)
    assert stopped.returncode == 75, stopped.stderr[-4000:]
    assert "Traceback" not in stopped.stderr and "--resume auto" in stopped.stderr
    assert (run_dir / "state" / "PREEMPTED").read_text() == "step 5\n"
    ckpt = checkpoint.resolve(run_dir)
    assert ckpt.name == "step_00000005" and json.loads((ckpt / "train_state.json").read_text())["world"] == 2
    assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    resumed = launch(data, run_dir, *BAR, "train.parallel=fsdp", "--resume", "auto", gpus=1)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "Warning" not in resumed.stderr
    diff = max_difference(weights(run_dir), weights(fsdp_elastic))
    print(f"SIGTERM at 5 -> 75 -> 1 process to 10: max |w - w_uninterrupted| = {diff:.3g}")
    assert diff <= 1e-5, diff
    logged, reference = tiny_run.metrics(run_dir), tiny_run.metrics(fsdp_elastic)
    assert [m["step"] for m in logged] == list(range(1, 11))
    torch.testing.assert_close([m["loss"] for m in logged], [m["loss"] for m in reference], rtol=1e-5, atol=0)


@pytest.mark.slow
def test_a_shard_that_cannot_be_written_exits_3_through_the_launcher(data, tmp_path):
    """RLIMIT_FSIZE below a shard's size: DCP fails on every rank, each says so in one line, the
    launcher exits 3, and nothing is marked complete."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    proc = subprocess.run(command(data, tmp_path / "run", "train.steps=1", "train.warmup=0", "train.parallel=fsdp"),
                          cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: could not write checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "run").rglob("COMPLETE")) and not list((tmp_path / "run").rglob("*.tmp"))


@pytest.mark.slow
def test_fsdp_checkpoint_is_what_eval_reads(fsdp_elastic, capsys):
    code, out, _ = run_cli(capsys, "eval", "--ckpt", str(fsdp_elastic), "--json", "-")
    assert code == 0
    assert json.loads(out)["results"][0]["tokens"] > 0
    loaded = inference.load_checkpoint(fsdp_elastic).model.state_dict()
    saved = weights(fsdp_elastic)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


# ------------------------------------------------------------ one launch of tests/helpers/fsdp_worker.py (2 processes)

def named_state(ckpt: Path) -> dict:
    """A checkpoint with optimizer.pt read without the code under test: weights and AdamW state by name."""
    cfg = load_config(ckpt / "config.yaml")
    names = parameter_names(build_model(cfg))
    saved = checkpoint.optimizer_state(ckpt)
    return {"model": load_file(ckpt / "model.safetensors"),
            "optim": {names[i]: value for i, value in saved["state"].items()}}


def assert_same_state(got: dict, want: dict, what: str) -> None:
    assert got["model"].keys() == want["model"].keys(), what
    for k, v in want["model"].items():
        assert torch.equal(got["model"][k].cpu(), v), (what, k)
    optim = got["optim"]["state"] if "state" in got["optim"] else got["optim"]
    assert optim.keys() == want["optim"].keys(), what
    for name, moments in want["optim"].items():
        for k, v in moments.items():
            assert torch.equal(torch.as_tensor(optim[name][k]).cpu(), v.cpu()), (what, name, k)


@pytest.fixture(scope="module")
def worker(data, tmp_path_factory):
    """Two one-process runs of armt (memory parameters: replicated under FSDP) saved at step 2, one
    with optimizer.pt (ddp), one with dcp/ (fsdp); then tests/helpers/fsdp_worker.py on 2 processes."""
    out = tmp_path_factory.mktemp("worker")
    for source, mode in (("ddp", "ddp"), ("dcp1", "fsdp")):
        cfg = load_config(["recipes/tiny.yaml", "recipes/memory/armt.yaml"], tiny_run.overrides(
            data, out / "sources" / source, "memory.kind=armt", "train.steps=2", f"train.parallel={mode}"))
        loop.train(cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", "--module", "tests.helpers.fsdp_worker", str(data), str(out)]
    proc = subprocess.run(cmd, cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_every_kind_trains_under_fsdp_like_one_process(data, worker):
    ddp_kinds.assert_like_one_process(worker, data)  # memory parameters replicated, averaged by fsdp.finish_gradients


@pytest.mark.slow
def test_checkpoints_load_across_formats_and_process_counts(worker):
    reference = named_state(checkpoint.resolve(worker / "sources" / "ddp"))
    # the two one-process runs trained identically: the dcp/ one holds the same state
    for source in ("ddp", "dcp1"):  # 1 process -> 2 processes, sharded (fsdp) and replicated (ddp)
        for mode in ("fsdp", "ddp"):
            got = torch.load(worker / f"loaded-{source}-{mode}.pt", weights_only=True)
            assert (got["step"], got["sharded"]) == (2, mode == "fsdp")
            assert_same_state(got, reference, f"{source} -> 2 processes {mode}")
    for source in ("ddp", "dcp1"):  # 2 processes' shards -> 1 process, through the loop, and for eval
        ckpt = checkpoint.resolve(worker / f"{source}-fsdp")
        assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        cfg = load_config(ckpt / "config.yaml")
        plan = preflight.RunPlan(cfg, 1, preflight.open_data(cfg), ckpt, (), (), None)
        model = loop._model(cfg, ckpt, CPU, False, False)
        opt = loop.build_optimizer(model, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay, CPU)
        loader = loop.SegmentLoader(plan.data, "train", loop.Windows(cfg.train.global_batch, cfg.train.segments,
                                    cfg.model.segment_len), 0)
        assert loop._resume(plan, model, opt, loader, CPU, False)[0] == 2
        names = parameter_names(model)
        optim = {names[i]: value for i, value in opt.state_dict()["state"].items()}
        assert_same_state({"model": model.state_dict(), "optim": optim}, reference, f"2 processes {source} -> 1")
        eval_weights = inference.load_checkpoint(ckpt).model.state_dict()
        assert all(torch.equal(eval_weights[k], v) for k, v in reference["model"].items())


# ------------------------------------------------------------ fast: plan, dry run, configuration, helpers

def test_a_corrupted_shard_is_named(data, tmp_path):
    cfg = load_config("recipes/tiny.yaml", tiny_run.overrides(data, tmp_path / "run", "train.steps=1", "train.warmup=0",
                                                              "train.parallel=fsdp"))
    loop.train(cfg)  # one process: nothing sharded, the fsdp layout all the same
    ckpt = checkpoint.resolve(tmp_path / "run")
    assert checkpoint.has_shards(ckpt) and not (ckpt / "optimizer.pt").exists()
    shard = ckpt / "dcp" / "__0_0.distcp"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"dcp/__0_0\.distcp is truncated or corrupted"):
        checkpoint.resolve(ckpt)


@pytest.mark.slow
def test_dry_run_reports_parameter_gradient_and_optimizer_memory_per_process(data, tmp_path):
    cfg = load_config("recipes/tiny.yaml", tiny_run.overrides(data, tmp_path / "run"))
    model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    ddp = describe(cfg, 4)
    assert ddp["parallel"] == "ddp"
    assert (ddp["weights_memory_per_process"], ddp["gradients_memory_per_process"],
            ddp["optimizer_memory_per_process"]) == (4 * n, 4 * n, 8 * n)
    sharded = describe(cfg.model_copy(update={"train": cfg.train.model_copy(update={"parallel": "fsdp"})}), 4)
    assert sharded["parallel"] == "fsdp"
    assert 8 * n / 4 <= sharded["optimizer_memory_per_process"] < 8 * n / 4 + 8 * 64  # a shard, padded rows
    assert sharded["memory_gib"] < ddp["memory_gib"] or n < 10**7  # tiny models: the gathered blocks dominate
    # a larger model: the per-process state shrinks with the processes
    big = state_bytes(build_model(load_config("recipes/tiny.yaml", tiny_run.overrides(
        data, tmp_path / "run", "model.n_layer=8", "model.d_model=128", "model.mlp_hidden=512"))), 8, bf16=True)
    alone = state_bytes(build_model(load_config("recipes/tiny.yaml", tiny_run.overrides(
        data, tmp_path / "run", "model.n_layer=8", "model.d_model=128", "model.mlp_hidden=512"))), 1, bf16=True)
    assert sum(big.values()) < sum(alone.values()) / 2
    for mode in ("ddp", "fsdp"):
        proc = subprocess.run([*command(data, tmp_path / "run", f"train.parallel={mode}"), "--dry-run"],
                              cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"parallel\t{mode}\n" in proc.stdout
        for row in ("weights_memory_per_process", "gradients_memory_per_process", "optimizer_memory_per_process"):
            value = proc.stdout.split(f"\n{row}\t")[1].split("\n")[0]
            assert value.endswith(("KiB", "MiB", "GiB")), (row, value)
    assert not (tmp_path / "run").exists()


def test_train_parallel_is_checked_before_step_one(data, tmp_path):
    with pytest.raises(UsageError, match="train.parallel"):
        load_config("recipes/tiny.yaml", tiny_run.overrides(data, tmp_path, "train.parallel=zero"))
    cfg = load_config("recipes/tiny.yaml", tiny_run.overrides(data, tmp_path, "train.parallel=fsdp", "train.compile=true"))
    with pytest.raises(UsageError, match="train.compile=true is not supported with train.parallel=fsdp"):
        preflight.check_parallel(cfg, 2)
    preflight.check_parallel(cfg, 1)  # one process: nothing is sharded, compile as usual
    # how a run executes, not another configuration: same run directory, and a resume may switch it
    assert load_config("recipes/tiny.yaml", ["train.parallel=fsdp"]).run.dir == load_config("recipes/tiny.yaml").run.dir


def test_clip_grad_norm_equals_torch_on_a_model_that_is_not_sharded():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for m in models:
        m(torch.randn(4, 6, generator=torch.Generator().manual_seed(1))).square().sum().backward()
    for max_norm in (0.1, float("inf")):
        want = torch.nn.utils.clip_grad_norm_(models[0].parameters(), max_norm)
        got = fsdp.clip_grad_norm(models[1], max_norm)
        torch.testing.assert_close(got, want)
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(b.grad, a.grad)
