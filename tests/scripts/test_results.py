"""scripts/results.py: every number on the page and in results.json comes from the run's files."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
SPEC = importlib.util.spec_from_file_location("results", SCRIPTS / "results.py")
results = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(results)
REPRO = importlib.util.spec_from_file_location("reproduce", SCRIPTS / "reproduce.py")
reproduce = importlib.util.module_from_spec(REPRO)
REPRO.loader.exec_module(reproduce)


def mqar_record(kind, acc, sampling=None):
    """acc: accuracy per distance 0, 1, 2, 3 (10, 10, 30, 50 answer tokens)."""
    tokens = [10, 10, 30, 50]
    by_d = {str(d): {"tokens": n, "accuracy": a, "loss": 1 - a} for d, (n, a) in enumerate(zip(tokens, acc))}
    mem = {"kind": kind, **({"schedule": sampling} if sampling else {})}
    total = sum(n * a for n, a in zip(tokens, acc)) / sum(tokens)
    return {"memory": mem, "answer_by_distance": by_d, "answer_token_accuracy": total, "answer_loss": 1 - total}


@pytest.fixture
def out(tmp_path):
    z = reproduce.SIZES["smoke"]
    todo = reproduce.variants(z, ["none", "elastic", "xl"], "mqar")
    (tmp_path / "settings.json").write_text(json.dumps({"size": "smoke", "settings": z, "kinds": [], "variants": todo}))
    (tmp_path / "eval").mkdir()
    acc = {"none": [1.0, 0.1, 0.05, 0.0], "elastic-order8-uniform": [1.0, 0.9, 0.8, 0.6],
           "none-one-segment": [1.0, 1.0, 1.0, 0.8], "xl-cache8": [1.0, 0.2, 0.06, 0.06],
           "xl-cache8-grad": [1.0, 0.9, 0.1, 0.1]}
    for name, a in acc.items():
        kind = name.split("-")[0]  # none, elastic, xl
        recs = [mqar_record(kind, a, "uniform" if kind == "elastic" else None)]
        if kind == "elastic":
            recs.append(mqar_record(kind, [1.0, 0.5, 0.5, 0.5], "exponential"))
        (tmp_path / "eval" / f"mqar-{name}.json").write_text(json.dumps({"results": recs}))
    run = tmp_path / "runs" / "mqar-elastic-order8-uniform"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 3, "loss": 2.0}\n{"step": 3, "val_loss": 1.0, "val_accuracy": 0.25}\n')
    return tmp_path  # every other variant has no eval file: failed


def test_collect_reads_every_number_from_the_eval_files(out):
    table = results.collect(out)["mqar"]
    e = table["elastic-order8-uniform"]
    assert e["accuracy_by_distance"] == {"0": 1.0, "1": 0.9, "2": 0.8, "3": 0.6}
    assert e["accuracy_distance_ge_2"] == pytest.approx((30 * 0.8 + 50 * 0.6) / 80)
    assert e["learning_curve"] == [[3, 0.25]] and e["group"] == "matched"
    assert table["elastic-order8-exponential"]["group"] == "sampling"
    assert table["xl-cache128-paper"] == {"kind": "xl", "group": "paper", "failed": True}  # no eval file


def test_findings_state_the_bars_with_their_numbers(out):
    lines = results.findings(results.collect(out)["mqar"], 1 / 16, reproduce.SIZES["smoke"])
    assert any("Control" in x and "0.900" in x and "misses the 0.95 bar" in x for x in lines)
    assert any("`none`" in x and "1.000" in x and "0.019" in x for x in lines)
    # xl's cache of 8 tokens reaches d=1 (one segment of 16 at most): 10 answers there, 80 beyond
    exact = [x for x in lines if x.startswith("- Exact cache")][0]
    assert "(d=1..1)" in exact and "detached, as the paper) 0.200" in exact and "ablation) 0.900" in exact
    assert "beyond it 0.060 and 0.100" in exact
    best = [x for x in lines if x.startswith("- Best memory")][0]
    assert "`elastic-order8-uniform` with 0.675" in best and "misses the 0.90 bar" in best


@pytest.mark.slow
def test_write_makes_the_page_json_and_pngs(out, tmp_path):
    dest = tmp_path / "docs" / "results.md"
    results.write(out, dest)
    page = dest.read_text()
    assert "| elastic-order8-uniform | matched |" in page and "| xl-cache128-paper | paper | failed |" in page
    data = json.loads(dest.with_suffix(".json").read_text())
    assert data["mqar"]["elastic-order8-uniform"]["accuracy_by_distance"]["2"] == 0.8
    for role in ("distance", "frontier", "sampling", "learning", "lm"):
        assert (dest.parent / f"results-{role}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bins_are_token_weighted_means():
    import results_plots

    xs, ys = results_plots.binned([1.0, 3.0, None, 5.0, 7.0], [1, 3, 0, 2, 2], width=2)
    assert xs == [1.5, 3.5, 5.0]
    assert ys == [(1 * 1 + 3 * 3) / 4, 5.0, 7.0]


def test_every_kind_has_a_matched_variant_and_the_sweep_names_its_size():
    z = reproduce.SIZES["cpu"]
    names = [v["name"] for v in reproduce.variants(z, sorted(reproduce_kinds()), None)]
    assert "none-one-segment" in names and "none-distance0" in names and "elastic-order64-uniform" in names
    assert "infinity-basis64-detached-paper" in names and "memorizing-store128-paper" in names
    assert "xl-cache128-paper" in names and "xl-cache32" in names  # xl's frontier: matched and paper
    assert len(set(names)) == len(names) - 2  # none and elastic also run on the code corpus


def reproduce_kinds():
    from elastic_cli.memory import REGISTRY

    return REGISTRY


@pytest.mark.slow
def test_results_heatmap_panels_and_json(tmp_path):
    import json
    import subprocess
    import sys

    cells = {"lengths": [64, 256], "depths": [0.0, 1.0], "binned": False, "accuracy": [[1.0, 0.5], [None, 0.0]],
             "docs": [[1, 2], [0, 3]]}
    for name, kind in (("a", "none"), ("b", "elastic")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"results": [{"memory": {"kind": kind}, "heatmap": cells}]}))
    (tmp_path / "lm.json").write_text(json.dumps({"results": [{"memory": {"kind": "none"}, "heatmap": None}]}))
    script = str(SCRIPTS / "results_heatmap.py")
    done = subprocess.run([sys.executable, script, tmp_path / "a.json", tmp_path / "b.json", tmp_path / "lm.json",
                           "--out", tmp_path / "h.png"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "h.json").read_text()) == {"a: none": cells, "b: elastic": cells}
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = subprocess.run([sys.executable, script, tmp_path / "lm.json", "--out", tmp_path / "x.png"],
                          capture_output=True, text=True)
    assert done.returncode == 3 and "no result with a heatmap" in done.stderr and not (tmp_path / "x.png").exists()
