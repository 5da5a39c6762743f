"""scripts/results.py: tables and verdicts come from the eval files; losses are reported as losses."""
import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("results", Path(__file__).parent.parent / "scripts" / "results.py")
results = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(results)


def record(kind, schedule=None, exact=None, ppl=10.0, bpb=1.0, curve=(3.0, 2.5)):
    mem = {"kind": kind, **({"schedule": schedule, "samples": 4, "order": 4} if schedule else {})}
    graded = {"answer_token_accuracy": (1 + exact) / 2, "answer_loss": 2 - exact} if exact is not None else {}
    return {"memory": mem, "exact_match": exact, "answers": 10, "perplexity": ppl, "bits_per_byte": bpb,
            "loss_by_segment": list(curve) + [None], "tokens": 100, **graded}


def write_eval(out: Path, dataset: str, kind: str, *records):
    (out / "eval").mkdir(parents=True, exist_ok=True)
    (out / "eval" / f"{dataset}-{kind}.json").write_text(json.dumps({"results": list(records)}))


@pytest.fixture
def out(tmp_path):
    for task, (n, e_u, e_x, x) in {"passkey": (0.1, 0.6, 0.2, 0.7), "recall": (0.0, 0.3, 0.4, 0.1)}.items():
        write_eval(tmp_path, task, "none", record("none", exact=n))
        write_eval(tmp_path, task, "elastic", record("elastic", "uniform", exact=e_u), record("elastic", "exponential", exact=e_x))
        write_eval(tmp_path, task, "xl", record("xl", exact=x))
    write_eval(tmp_path, "code", "none", record("none", bpb=1.2, curve=(3.0, 3.0)))
    write_eval(tmp_path, "code", "elastic", record("elastic", "uniform", bpb=1.1), record("elastic", "exponential", bpb=1.15))
    return tmp_path  # no code-xl file: xl failed on code


def test_load_results_marks_missing_variants_failed(out):
    table = results.load_results(out, ["none", "elastic", "xl"])
    assert list(table["passkey"]) == ["none", "elastic (uniform)", "elastic (exponential)", "xl"]
    assert table["code"]["xl"] is None
    assert table["recall"]["elastic (exponential)"]["exact_match"] == 0.4


def test_verdicts_say_where_elastic_loses(out):
    table = results.load_results(out, ["none", "elastic", "xl"])
    lines = results.verdicts(table["passkey"], "exact_match", True, "passkey")
    assert lines[0].startswith("- passkey: **elastic (uniform) loses** to xl (exact_match 0.6 vs 0.7); beats none")
    assert "**elastic (exponential) loses** to xl" in lines[1]
    lm = results.verdicts(table["code"], "bits_per_byte", False, "code")
    assert lm == ["- code: elastic (uniform) is not beaten (bits_per_byte 1.1); beats none",
                  "- code: elastic (exponential) is not beaten (bits_per_byte 1.15); beats none"]


def test_tables_show_numbers_and_failures(out):
    table = results.load_results(out, ["none", "elastic", "xl"])
    floats = {"none": 0, "elastic": 128, "xl": 128}
    task = results.task_table(table, floats)
    # per task: exact match, token accuracy, answer loss; then answers and floats
    assert "| elastic (uniform) | 0.600 | 0.800 | 1.400 | 0.300 | 0.650 | 1.700 | 10/10 | 128 |" in task
    lm = results.lm_table(table["code"], floats)
    assert "| none | 10.000 | 1.2000 | 3.0000 | 3.0000 | 100 | 0 |" in lm
    assert "| xl | failed | failed | failed | failed | - | 128 |" in lm


def test_plot_writes_a_png(out, tmp_path):
    results.plot(results.load_results(out, ["none", "elastic", "xl"])["code"], tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bins_are_token_weighted_means():
    xs, ys = results.binned([1.0, 3.0, None, 5.0, 7.0], [1, 3, 0, 2, 2], width=2)
    assert xs == [1.5, 3.5, 5.0]  # 1-based centres; the last bin holds one segment
    assert ys == [(1 * 1 + 3 * 3) / 4, 5.0, 7.0]
