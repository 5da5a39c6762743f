"""Runs a researcher can move, name and read (issue 26): checkpoints that carry their tokenizer and
load on any device, one run directory per configuration, one CLI convention, help and lists, outputs
that create their folders, asking about a document."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from elastic_cli.runs import checkpoint
from elastic_cli.runs import inference
from elastic_cli.runs.checkpoint import file_sha256
from elastic_cli.config import dump_yaml, load_config
from elastic_cli.errors import DataError, UsageError
from tests.helpers import tiny_run
from tests.helpers.cli_run import run_cli as cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny.yaml"


@pytest.fixture
def trained(tiny_corpus, trained_run):
    """Prepared data and a run trained 2 steps through the CLI (conftest.py; read only)."""
    return tiny_corpus, trained_run


def without_speed(report: dict) -> dict:
    return {**report, "checkpoint": None,
            "results": [{k: v for k, v in r.items() if k not in ("speed", "checkpoint")} for r in report["results"]]}


# ------------------------------------------------------------------ a checkpoint carries its tokenizer

def test_a_checkpoint_carries_its_tokenizer_checksummed(trained, tmp_path):
    _, run = trained
    ckpt = checkpoint.resolve(run)
    carried = ckpt / "tokenizer.model"
    assert carried.read_bytes() == tiny_run.TOKENIZER.read_bytes()
    assert json.loads((ckpt / "COMPLETE").read_text())["sha256"]["tokenizer.model"] == file_sha256(carried)
    assert checkpoint.open_checkpoint(ckpt).tokenizer == carried
    damaged = tmp_path / ckpt.name  # the shared run stays whole: damage a copy
    shutil.copytree(ckpt, damaged)
    with open(damaged / "tokenizer.model", "r+b") as f:  # a damaged copy is a damaged checkpoint, named
        f.write(b"x")
    with pytest.raises(DataError, match="tokenizer.model is truncated or corrupted"):
        checkpoint.resolve(damaged)


def test_tokenizer_resolution_and_old_checkpoints(trained, tmp_path):
    _, run = trained
    old = tmp_path / "old"
    shutil.copytree(checkpoint.resolve(run), old)
    books = ROOT / "tokenizers" / "books-8k.model"
    with pytest.raises(DataError, match=r"--tokenizer .*books-8k.model is not the tokenizer .* was trained with"):
        checkpoint.open_checkpoint(old, str(books))
    (old / "tokenizer.model").unlink()  # a checkpoint from before they carried one ...
    complete = json.loads((old / "COMPLETE").read_text())
    del complete["sha256"]["tokenizer.model"]
    (old / "COMPLETE").write_text(json.dumps(complete))
    checkpoint.resolve(old)  # ... still verifies
    assert checkpoint.open_checkpoint(old).tokenizer == tiny_run.TOKENIZER  # falls back to what the data recorded
    assert checkpoint.open_checkpoint(old, str(books)).tokenizer == books  # --tokenizer: nothing to compare with
    cfg = load_config(old / "config.yaml")
    gone = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(tmp_path / "nowhere"),
                                                                       "tokenizer": "tokenizers/gone.model"})})
    (old / "config.yaml").write_text(dump_yaml(gone))
    complete["sha256"]["config.yaml"] = file_sha256(old / "config.yaml")
    (old / "COMPLETE").write_text(json.dumps(complete))
    opened = checkpoint.open_checkpoint(old)  # evaluating needs no tokenizer; generating does
    with pytest.raises(DataError, match=r"carries none .* data.tokenizer \(tokenizers/gone.model\) is not a file "
                                        r"here; pass --tokenizer PATH"):
        opened.require_tokenizer()


@pytest.mark.slow
def test_a_moved_run_generates_and_evaluates_the_same_anywhere(trained, tmp_path, capsys, monkeypatch):
    data, run = trained
    gen = ["def main(", "--max-new-tokens", "8", "--temperature", "0"]
    ev = ["--data", data, "--max-docs", "2", "--out", "-"]
    code, text_here, err = cli(capsys, "generate", run, *gen)
    assert code == 0, err
    code, report_here, err = cli(capsys, "eval", run, *ev)
    assert code == 0, err
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(run, moved)
    (tmp_path / "third").mkdir()
    monkeypatch.chdir(tmp_path / "third")
    code, text_there, err = cli(capsys, "generate", moved, *gen, "--device", "cpu")
    assert code == 0, err
    assert text_there == text_here and text_here.strip()
    code, report_there, err = cli(capsys, "eval", moved, *ev, "--device", "cpu")
    assert code == 0 and "warning" not in err, err
    assert without_speed(json.loads(report_there)) == without_speed(json.loads(report_here))


# ------------------------------------------------------------------ any device, inference-time settings

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_run_evaluates_on_a_cpu_machine(trained, tmp_path, capsys):
    data, run = trained
    cfg = load_config(checkpoint.resolve(run) / "config.yaml", ["run.device=cuda"])
    model = inference.load_checkpoint(run).model
    from elastic_cli.config import dump_yaml

    cuda_run = tmp_path / "cuda-run"
    checkpoint.save(cuda_run, model, torch.optim.AdamW(model.parameters()), {"step": 2}, dump_yaml(cfg), 1,
                    tiny_run.TOKENIZER)
    base = ["eval", cuda_run, "--data", data, "--max-docs", "1", "--no-gain", "--out", "-"]
    code, out, err = cli(capsys, *base)
    assert code == 0, err  # default device: auto, whatever trained the run
    assert json.loads(out)["results"][0]["speed"]["device"] == "cpu"
    assert cli(capsys, *base, "run.device=cpu")[0] == 0  # the old spelling, as a key=value word
    code, _, err = cli(capsys, *base, "--device", "cuda")
    assert code == 2 and err == "error: run.device=cuda but no CUDA device is visible\n"
    code, _, err = cli(capsys, *base, "train.lr=1")
    assert code == 2 and "train.lr cannot be set for a trained model" in err
    code, _, err = cli(capsys, *base, "model.d_model=64")
    assert code == 2 and "model.d_model cannot be set for a trained model" in err
    code, _, err = cli(capsys, *base, "memory.kind=none")
    assert code == 2 and "memory.kind is fixed by the checkpoint's weights" in err


@pytest.mark.slow
def test_eval_key_values_no_gain_and_the_step_in_the_title(trained, capsys, tmp_path):
    data, run = trained
    code, out, err = cli(capsys, "eval", run, "--data", data, "--max-docs", "2", "eval.batch=1", "--out", "-")
    assert code == 0, err
    with_gain = json.loads(out)
    gain = with_gain["results"][0]["long_context_gain"]  # the empty-memory pass ran: its numbers are there
    assert with_gain["step"] == 2 and gain["threshold_nats"] == 2.0
    assert math.isfinite(gain["mean_nats"]) and 0 <= gain["key_fraction"] <= 1 and gain["key_tokens"] >= 0
    code, out, err = cli(capsys, "eval", run, "--data", data, "--max-docs", "2", "--no-gain", "--out", "-")
    no_gain = json.loads(out)
    assert no_gain["results"][0]["long_context_gain"] is None
    assert no_gain["results"][0]["loss"] == pytest.approx(with_gain["results"][0]["loss"], abs=1e-6)  # same scores
    code, out, err = cli(capsys, "eval", "--ckpt", run, "--data", data, "--max-docs", "1", "--no-gain",
                         "--json", tmp_path / "x" / "y" / "z.json")  # old spellings; folders created
    assert code == 0, err
    assert out.startswith(f"# eval of {checkpoint.resolve(run)} (step 2) on val of {data}\n")
    assert json.loads((tmp_path / "x" / "y" / "z.json").read_text())["step"] == 2


# ------------------------------------------------------------------ asking about a document

def test_generate_reads_the_document_then_the_prompt(trained, tmp_path, capsys):
    """--file DOC --prompt Q continues exactly as the file DOC + newline + Q does (greedy), and not as
    Q alone: the prompt is read after the document, with the document in memory."""
    _, run = trained
    doc = tmp_path / "doc.py"
    doc.write_text("".join(tiny_run.documents()[:3]))  # many segments of 16 tokens
    joined = tmp_path / "joined.py"
    joined.write_text(doc.read_text() + "\ndef f_0_1(")
    gen = ["--max-new-tokens", "6", "--temperature", "0"]
    code, asked, err = cli(capsys, "generate", run, "--file", doc, "--prompt", "def f_0_1(", *gen,
                           "--out", tmp_path / "a" / "s.jsonl")
    assert code == 0, err
    assert cli(capsys, "generate", run, "--file", joined, *gen)[1] == asked
    rec = json.loads((tmp_path / "a" / "s.jsonl").read_text())
    code, _, err = cli(capsys, "generate", run, "def f_0_1(", *gen, "--out", tmp_path / "b.jsonl")
    alone = json.loads((tmp_path / "b.jsonl").read_text())
    assert rec["prompt_tokens"] > 10 * 16 > alone["prompt_tokens"]
    code, two, err = cli(capsys, "generate", run, "--file", doc, "--file", joined, "--prompt", "x", *gen)
    assert code == 0 and two.strip(), err


def test_generate_positional_prompt_and_words(trained, capsys):
    _, run = trained
    code, out, err = cli(capsys, "generate", run, "def main(", "--max-new-tokens", "2")
    assert code == 0, err
    code, _, err = cli(capsys, "generate", run, "a", "b")
    assert code == 2 and "unexpected word 'b'" in err
    code, _, err = cli(capsys, "generate")
    assert code == 2 and "give the checkpoint: elastic generate RUN_OR_CHECKPOINT" in err


# ------------------------------------------------------------------ one run directory per configuration

def test_overrides_that_change_the_configuration_get_their_own_directory():
    def run_dir(*overrides):
        return load_config(TINY, list(overrides)).run.dir

    assert run_dir() == "runs/tiny"
    assert run_dir("memory.kind=elastic", "train.lr=0.003", "train.lr=3e-3") == "runs/tiny"  # the recipe's values
    assert run_dir("run.gpus=2", "train.log_every=1", "eval.batch=2", "train.save_every=5") == "runs/tiny"
    assert run_dir("memory.kind=none") == "runs/tiny--memory.kind-none"
    assert run_dir("train.lr=1e-3", "memory.kind=none") == run_dir("memory.kind=none", "train.lr=1e-3") \
        == "runs/tiny--memory.kind-none--train.lr-1e-3"
    assert run_dir("data.path=data/mqar") == "runs/tiny--data.path-data_mqar"
    assert run_dir("data.path=data/mqar", "run.dir=mine") == "mine"
    long = run_dir("data.path=data/mqar", "model.segment_len=32", "train.segments=8", "train.bptt_segments=8",
                   "train.loss_on=answers", "model.prev_embed=true")
    assert long.startswith("runs/tiny--data.path-data_mqar--") and len(long) <= len("runs/") + 80 + 10
    assert long != run_dir("data.path=data/mqar", "model.segment_len=32", "train.segments=8",
                           "train.bptt_segments=8", "train.loss_on=answers", "model.prev_embed=false")


def test_steps_alone_fits_the_recipes_warmup(capsys):
    cfg = load_config(TINY, ["train.steps=10"])
    assert (cfg.train.steps, cfg.train.warmup) == (10, 10)
    assert "train.warmup=15" in capsys.readouterr().err
    with pytest.raises(UsageError, match="train.warmup=15 exceeds train.steps=10"):
        load_config(TINY, ["train.steps=10", "train.warmup=15"])  # both given: checked as given


def test_overwrite_replaces_only_a_run_of_the_same_configuration(trained, tmp_path, capsys):
    data, run = trained
    other = tmp_path / "run"
    shutil.copytree(run, other)
    args = ["train", TINY, *tiny_run.overrides(data, other, "train.steps=2", "train.eval_every=1")]
    code, _, err = cli(capsys, *args, "train.lr=1e-3", "--overwrite", "--dry-run")
    assert code == 2 and "holds a run of another configuration (train.lr differ); it is not deleted" in err
    assert (other / "checkpoints" / "latest").is_file()
    code, out, err = cli(capsys, *args, "train.log_every=2", "--overwrite", "--dry-run")  # same configuration
    assert code == 0, err
    assert f"--overwrite deletes {other}: config.yaml, " in out and "checkpoints/ (1 complete, newest step_00000002)" in out
    code, _, err = cli(capsys, *args, "--overwrite")
    assert code == 0 and f"--overwrite: deleting {other}: config.yaml" in err and "done: step 2 (2 this run" in err


def test_dry_run_checks_the_architecture_of_the_checkpoint_to_resume(trained, tmp_path, capsys):
    data, run = trained
    args = ["train", TINY, *tiny_run.overrides(data, run, "train.steps=2", "train.eval_every=1"), "--resume", "auto"]
    code, _, err = cli(capsys, *args, "model.d_model=64", "--dry-run")
    assert code == 3 and "the architecture changed (model.d_model)" in err
    code, _, err = cli(capsys, *args, "--dry-run")
    assert code == 0, err
    code, _, err = cli(capsys, "train", TINY, *tiny_run.overrides(data, tmp_path / "r"), "--resume", "yes")
    assert code == 2 and err.startswith("error: --resume yes: did you mean --resume auto?")


# ------------------------------------------------------------------ help, lists, explanations

@pytest.mark.parametrize("args", [[], ["config"], ["tokenizer"]])
def test_a_group_without_a_command_prints_its_help(capsys, args):
    code, out, err = cli(capsys, *args)
    assert code == 0 and err == "" and out.startswith("Usage: elastic") and out.count("\n") > 5
    assert "Commands:" in out


def test_list_kinds_tasks_corpora_recipes(capsys):
    from elastic_cli.memory import REGISTRY

    code, out, _ = cli(capsys, "list", "kinds")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line and not line.startswith((" ", "("))]
    assert sorted(names) == sorted(REGISTRY) and len(names) == 9
    assert "    memory.order=64: LegS order N" in out and "    memory.cache=64: " in out
    tasks = [line.split()[0] for line in cli(capsys, "list", "tasks")[1].splitlines() if not line.startswith(" ")]
    assert tasks == ["passkey", "recall", "sorting", "mqar", "babilong", "niah-multikey", "niah-multivalue"]
    assert "python-stdlib" in cli(capsys, "list", "corpora")[1]
    recipes = cli(capsys, "list", "recipes")[1]
    assert "recipes/tiny.yaml  CPU, about a minute." in recipes and "recipes/memory/xl.yaml" in recipes
    code, _, err = cli(capsys, "list", "things")
    assert code == 2 and "'things' is not one of" in err


def test_config_show_explain_describes_every_key(capsys):
    import yaml

    code, out, _ = cli(capsys, "config", "show", TINY, "--explain")
    assert code == 0
    assert "  lr: 0.003  # peak learning rate (AdamW)" in out and "  order: 16  # LegS order N" in out
    keyed = [line for line in out.splitlines() if line.startswith("  ") and not line.startswith("  - ")]
    assert all("  # " in line for line in keyed)  # every key has its description
    assert yaml.safe_load(out) == yaml.safe_load(cli(capsys, "config", "show", TINY)[1])


@pytest.mark.parametrize("command", ["train", "eval", "generate", "export", "lm-eval", "bench", "prepare", "list",
                                     "config show", "tokenizer train"])
def test_every_command_help_has_examples(capsys, command):
    code, out, _ = cli(capsys, *command.split(), "--help")
    assert code == 0 and f"elastic {command.split()[0]} " in out.split("Options:")[0]


# ------------------------------------------------------------------ outputs create their folders

def test_export_creates_its_parent_folders(trained, tmp_path, capsys):
    pytest.importorskip("transformers")
    _, run = trained
    code, _, err = cli(capsys, "export", run, "--out", tmp_path / "a" / "b" / "c")
    assert code == 0, err
    assert (tmp_path / "a" / "b" / "c" / "tokenizer.model").read_bytes() == tiny_run.TOKENIZER.read_bytes()


# ------------------------------------------------------------------ what training says on a terminal

def test_training_lines_print_above_the_bar_on_a_terminal(monkeypatch, capsys, tmp_path):
    from elastic_cli import console
    from elastic_cli.train.loop import Summary, _Log, summary_line

    monkeypatch.setattr(console, "interactive", lambda: True)
    log = _Log(tmp_path / "train.log")
    with console.progress(3, "train", "step") as bar:
        log.bar = bar
        bar.update(1)
        log.write("step 1 val_loss 1.2345")
        bar.update(1)
    log.close()
    err = capsys.readouterr().err
    assert "train:" in err and "2/3" in err  # the bar, drawn by tqdm
    assert "step 1 val_loss 1.2345\n" in err
    assert err.split("step 1 val_loss")[0].endswith("\r")  # the bar was cleared first (tqdm.write), then redrawn
    assert (tmp_path / "train.log").read_text().endswith(" step 1 val_loss 1.2345\n")
    line = summary_line(Summary(150, 1_234_567, 3.14159), 50, 61.2, [(3.5, 50), (3.25, 100), (3.3, 150)],
                        Path("runs/tiny/checkpoints/step_00000150"), Path("runs/tiny"))
    assert line == ("done: step 150 (50 this run, 61 s), 1,234,567 tokens, last loss 3.1416, val_loss best 3.2500 "
                    "(step 100) last 3.3000 (step 150); checkpoint runs/tiny/checkpoints/step_00000150; run directory "
                    "runs/tiny (elastic eval runs/tiny)")
