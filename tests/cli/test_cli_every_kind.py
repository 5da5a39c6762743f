"""`elastic eval` and `elastic generate` work through the CLI for every memory kind in the registry
(issues 7 and 8): finite numbers, generation across segment boundaries, same seed -> same text."""
import json
import math

import pytest

from elastic_cli.memory import REGISTRY
from tests.helpers.cli_run import run_cli


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_eval_and_generate_through_the_cli(kind, tiny_model_of, tmp_path, capsys):
    run = tiny_model_of(kind)
    code, out, err = run_cli(capsys, "eval", "--ckpt", run, "--json", "-")
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert result["memory"]["kind"] == kind
    assert math.isfinite(result["loss"]) and len(result["loss_by_segment"]) > 1  # memory carried across segments
    # segment_len is 16: the prompt and 24 new tokens cross at least one fold into memory
    args = ["generate", "--ckpt", run, "--prompt", "def compute(values):", "--max-new-tokens", "24",
            "--temperature", "0.8", "--output", tmp_path / "out.jsonl"]
    code, first, err = run_cli(capsys, *args, "--seed", "3")
    assert code == 0, err
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert record["prompt_tokens"] + len(record["tokens"]) > 16
    code, second, _ = run_cli(capsys, *args, "--seed", "3")
    assert code == 0 and first == second
