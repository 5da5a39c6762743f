"""`make demo` and the README: the demo's exact command lines run end to end through the real CLI
on a small corpus and budget, and every `elastic` command the README shows parses."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from elastic_cli.cli.app import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def demo_lines(**variables) -> list[str]:
    """The `demo` recipe's command lines as make would run them (dry run, set-up skipped)."""
    args = ["make", "-s", "-n", "-o", ".venv/.installed", "demo", "ELASTIC=elastic"]
    args += [f"{k}={v}" for k, v in variables.items()]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def readme_commands() -> list[list[str]]:
    """Every `elastic ...` command in the README's code blocks, as argv lists (after `elastic`)."""
    found = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M):
        if lang not in ("", "sh", "bash"):  # e.g. the Python example of the Hugging Face export
            continue
        for line in block.replace("\\\n", " ").splitlines():  # a trailing backslash continues the command
            line = line.split("|")[-1].strip().replace("$SLURM_NNODES", "4")
            words = shlex.split(line, comments=True)
            if words[:1] == ["srun"]:
                words = words[1:]
            if words[:1] == ["elastic"]:
                found.append(words[1:])
    return found


def parse(argv: list[str]) -> click.Command:
    """Parse argv the way `elastic` would (options, types, choices), without running the command."""
    ctx = cli.make_context("elastic", list(argv))
    cmd = cli
    while isinstance(cmd, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx)
    return cmd


def test_readme_first_screen_has_the_two_commands():
    first = README.splitlines()[:12]
    assert any(line.startswith("make demo") for line in first) and any(line.startswith("make test") for line in first)


@needs_make
def test_readme_demo_block_is_exactly_make_demo():
    block = README.split("then runs:", 1)[1].split("```")[1]
    assert [line.strip() for line in block.splitlines() if line.strip()] == demo_lines()


def test_every_readme_command_parses():
    commands = readme_commands()
    assert len(commands) >= 15
    names = {parse(argv).name for argv in commands}
    assert {"prepare", "train", "eval", "generate"} <= names


@needs_make
@pytest.mark.slow
def test_demo_end_to_end_on_a_small_budget(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    stdlib = Path(json.__file__).parent  # a small real code corpus: the json package
    for p in sorted(stdlib.glob("*.py")):
        shutil.copy(p, src / p.name)
    data, run = tmp_path / "data", tmp_path / "run"
    train = (f"data.path={data} run.dir={run} train.steps=2 train.warmup=1 train.eval_every=0 "
             f"train.save_every=0 train.global_batch=4 train.micro_batch=4")
    lines = demo_lines(DATA=data, RUN=run, DEMO_SOURCES=src, DEMO_TRAIN=train)
    assert [shlex.split(line)[1] for line in lines] == ["prepare", "train", "eval", "generate"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    outputs = []
    for line in lines:
        argv = shlex.split(line)
        if argv[1] == "prepare":
            argv += ["--val-frac", "0.3", "--test-frac", "0.1"]  # 5 modules: 2 train, 2 val, 1 test
        proc = subprocess.run([sys.executable, "-m", "elastic_cli", *argv[1:]], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"
        assert "\r" not in proc.stderr and "\x1b[" not in proc.stdout  # plain output off a terminal
        outputs.append(proc)
    assert (run / "checkpoints" / "latest").is_file()
    table = outputs[2].stdout
    assert "perplexity" in table and "bits per byte" in table and "loss, segment 1" in table
    assert "tokens/s" in table and "cpu_peak_rss" in table
    assert outputs[3].stdout.strip() and "tokens/s" in outputs[3].stderr
