"""Small things a new user meets: one-line click usage errors, --plot formats, tokenizer outputs
never silently replaced, the README tokenizer example consistent with the recipes, file modes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from elastic_cli.config import load_config
from tests.helpers.cli_run import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args, message", [(["eval"], "give the checkpoint: elastic eval RUN_OR_CHECKPOINT"),
                                           (["train", "recipes/tiny.yaml", "--gpus", "0"], "Invalid value for '--gpus'"),
                                           (["frobnicate"], "No such command 'frobnicate'"),
                                           (["generate", "--ckpt", "x", "--bogus"], "No such option '--bogus'")])
def test_click_usage_errors_are_one_line_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and "--help" in err and "Usage:" not in err


@pytest.mark.slow
def test_plot_writes_the_format_its_suffix_names(tiny_model, tmp_path, capsys):
    run = tiny_model
    magic = {".png": b"\x89PNG", ".jpg": b"\xff\xd8\xff"}
    for suffix, head in magic.items():
        code, _, err = run_cli(capsys, "eval", "--ckpt", run, "--max-docs", "1", "--plot", tmp_path / f"p{suffix}")
        assert code == 0, err
        assert (tmp_path / f"p{suffix}").read_bytes().startswith(head), suffix
    for bad in ("p.docx", "plot"):
        code, _, err = run_cli(capsys, "eval", "--ckpt", run, "--plot", tmp_path / bad)
        assert code == 2 and "suffix must name an image format" in err and ".png" in err
        assert not (tmp_path / bad).exists()


@pytest.mark.slow
def test_tokenizer_train_refuses_an_existing_output(tmp_path, capsys):
    src = ROOT / "elastic_cli"  # some text with enough distinct pieces
    out = tmp_path / "tok.model"
    out.write_bytes(b"shipped tokenizer")
    code, _, err = run_cli(capsys, "tokenizer", "train", src, "--vocab-size", "300", "--out", out)
    assert code == 2 and "exists" in err and "--force" in err
    assert out.read_bytes() == b"shipped tokenizer"
    code, _, err = run_cli(capsys, "tokenizer", "train", src, "--vocab-size", "600", "--out", out, "--force")
    assert code == 0, err
    assert out.read_bytes() != b"shipped tokenizer"


def test_readme_tokenizer_example_fits_the_recipes():
    """The README's own-tokenizer example writes outside the shipped tokenizers/ and trains the
    vocabulary size the recipe it points to expects (else the next README step fails)."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"elastic tokenizer train \S+ --vocab-size (\d+) --out (\S+)", readme)
    assert m, "the README has no `elastic tokenizer train ... --vocab-size N --out PATH` example"
    size, out = int(m.group(1)), m.group(2)
    assert not (ROOT / out).exists() and not out.startswith("tokenizers/")
    assert f"--tokenizer {out}" in readme and f"data.tokenizer={out}" in readme
    for recipe in ("books-32k", "code-32k", "tiny"):
        assert load_config(ROOT / "recipes" / f"{recipe}.yaml").model.vocab_size == size
