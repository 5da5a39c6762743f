"""A checkpoint is opened once per command and passed on: `elastic eval` with three read schedules
finds the checkpoint, verifies its checksums and reads its config.yaml once, not once per variant
(issue: three times per variant before), and every variant loads the same weights."""
import json

from elastic_cli.config import recipes
from elastic_cli.runs import checkpoint

from tests.helpers.cli_run import run_cli


def test_eval_of_three_schedules_verifies_and_parses_the_checkpoint_once(tiny_model, capsys, monkeypatch):
    run = tiny_model
    counts = {"verify": 0, "yaml": []}
    verify, load_tree = checkpoint._check_files, recipes._load_tree

    def counted_verify(*args):
        counts["verify"] += 1
        return verify(*args)

    def counted_tree(path, *args):
        counts["yaml"].append(path.name)
        return load_tree(path, *args)

    monkeypatch.setattr(checkpoint, "_check_files", counted_verify)
    monkeypatch.setattr(recipes, "_load_tree", counted_tree)
    code, out, err = run_cli(capsys, "eval", run, "--compare-schedules", "uniform,exponential,gauss", "--no-gain",
                             "--out", "-")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["memory"]["schedule"] for r in results] == ["uniform", "exponential", "gauss"]
    assert counts == {"verify": 1, "yaml": ["config.yaml"]}
