"""scripts/results.py: every number on the page and in results.json comes from the run's files; seeds
are aggregated as mean and spread, learning rates and the sanity task are reported per matched row,
the length-generalisation evals per eval length."""
import json
import math

import pytest

from tests.helpers.script_modules import reproduce, results, results_plots

TOKENS = [10, 10, 30, 50]  # answer tokens at distances 0, 1, 2, 3


def mqar_record(kind, acc, schedule=None):
    """An `elastic eval --json` result: acc is the accuracy per distance 0, 1, 2, 3 (10, 10, 30, 50 tokens)."""
    by_d = {str(d): {"tokens": n, "accuracy": a, "loss": 1 - a} for d, (n, a) in enumerate(zip(TOKENS, acc))}
    mem = {"kind": kind, **({"schedule": schedule} if schedule else {})}
    total = sum(n * a for n, a in zip(TOKENS, acc)) / sum(TOKENS)
    return {"memory": mem, "answer_by_distance": by_d, "answer_token_accuracy": total, "answer_loss": 1 - total}


def far(acc):
    return (30 * acc[2] + 50 * acc[3]) / 80


SEED_ACC = {0: [1.0, 0.9, 0.8, 0.6], 1: [1.0, 0.8, 0.7, 0.5], 2: [1.0, 1.0, 0.9, 0.7]}


@pytest.fixture
def out(tmp_path):
    """A reproduce folder (smoke size, kinds none, elastic, xl): elastic has every seed at lr 3e-3, its
    trials, sanity task and length evals; xl only its trials (a failed row); none seed 0; controls."""
    z = reproduce.SIZES["smoke"]
    todo = reproduce.variants(z, ["none", "elastic", "xl"], ["mqar"])
    (tmp_path / "settings.json").write_text(json.dumps({"size": "smoke", "settings": z, "kinds": [], "variants": todo}))
    ev = tmp_path / "eval"
    ev.mkdir()
    rows = {v["name"]: v for v in todo}
    e = rows["elastic-order8-uniform"]
    for lr, acc in ((1e-3, 0.4), (3e-3, 0.7)):
        (ev / f"{reproduce.tag(e, lr, 0)}-val.json").write_text(json.dumps({"results": [mqar_record("elastic", [1, acc, acc, acc])]}))
    assert reproduce.choose_lr(tmp_path, z, e) == 3e-3
    for seed, acc in SEED_ACC.items():
        recs = [mqar_record("elastic", acc, "uniform"), mqar_record("elastic", [1.0, 0.5, 0.5, 0.5], "exponential")]
        (ev / f"{reproduce.tag(e, 3e-3, seed)}.json").write_text(json.dumps({"results": recs}))
        run = tmp_path / "runs" / reproduce.tag(e, 3e-3, seed)
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(f'{{"step": 3, "val_loss": 1.0, "val_accuracy": 0.{seed + 2}}}\n')
        for n in z["lengths"]:
            (ev / f"length-{e['name']}-seed{seed}-seg{n}.json").write_text(json.dumps({"results": [
                mqar_record("elastic", [1.0, 0.5, 0.25 * (seed + 1), 0.1], "uniform"),
                mqar_record("elastic", [1.0, 0.5, 0.5, 0.5], "exponential")]}))
    (ev / "sanity-elastic-order8-uniform.json").write_text(json.dumps({"results": [mqar_record("elastic", [0.0, 0.75, 0, 0])]}))
    x = rows["xl-cache8"]
    for lr in z["lrs"]:  # trials ran, the chosen rate's other seeds did not: no test eval
        (ev / f"{reproduce.tag(x, lr, 0)}-val.json").write_text(json.dumps({"results": [mqar_record("xl", [1, .2, .1, .1])]}))
    reproduce.choose_lr(tmp_path, z, x)
    n = rows["none"]
    (ev / f"{reproduce.tag(n, 1e-3, 0)}-val.json").write_text(json.dumps({"results": [mqar_record("none", [1, .1, .1, .1])]}))
    reproduce.choose_lr(tmp_path, z, n)
    (ev / f"{reproduce.tag(n, 1e-3, 0)}.json").write_text(json.dumps({"results": [mqar_record("none", [1.0, 0.1, 0.05, 0.0])]}))
    (ev / "mqar-none-one-segment.json").write_text(json.dumps({"results": [mqar_record("none", [1.0, 1.0, 1.0, 0.8])]}))
    (ev / "mqar-xl-cache8-grad.json").write_text(json.dumps({"results": [mqar_record("xl", [1.0, 0.9, 0.1, 0.1])]}))
    return tmp_path  # every other row has no eval file: failed


def test_choose_lr_takes_the_best_validation_accuracy_and_records_what_was_tried(out):
    lrs = json.loads((out / "eval" / "mqar-elastic-order8-uniform.lrs.json").read_text())
    assert lrs == {"tried": [{"lr": 1e-3, "val_accuracy": pytest.approx(0.4 + 0.6 * 10 / 100), "val_loss": pytest.approx(0.54)},
                             {"lr": 3e-3, "val_accuracy": pytest.approx(0.73), "val_loss": pytest.approx(0.27)}],
                   "chosen": 3e-3}
    none = json.loads((out / "eval" / "mqar-none.lrs.json").read_text())
    assert none["chosen"] == 1e-3 and none["tried"][1]["val_accuracy"] is None  # the 3e-3 trial failed


def test_matched_rows_are_the_mean_and_spread_over_seeds(out):
    e = results.collect(out)["mqar"]["elastic-order8-uniform"]
    fars = [far(a) for a in SEED_ACC.values()]
    mean = sum(fars) / 3
    assert e["accuracy_distance_ge_2"] == pytest.approx(mean)
    s = e["spread"]["accuracy_distance_ge_2"]
    assert s["min"] == pytest.approx(min(fars)) and s["max"] == pytest.approx(max(fars)) and s["n"] == 3
    assert s["sd"] == pytest.approx(math.sqrt(sum((f - mean) ** 2 for f in fars) / 2))
    assert e["accuracy_by_distance"]["1"] == pytest.approx(0.9)  # (0.9 + 0.8 + 1.0) / 3
    assert [x["seed"] for x in e["seeds"]] == [0, 1, 2] and e["seeds"][2]["accuracy_distance_ge_2"] == pytest.approx(far(SEED_ACC[2]))
    assert e["seeds"][1]["learning_curve"] == [[3, 0.3]] and e["lr"] == 3e-3 and len(e["lrs_tried"]) == 2
    assert e["sanity_d1"] == pytest.approx(0.075) and e["sanity_d1_passed"] is False  # 0.75 of 10 of 100 tokens
    assert e["steps"] == reproduce.SIZES["smoke"]["steps"] and e["curriculum"] is None
    table = results.collect(out)["mqar"]
    assert table["elastic-order8-exponential"]["group"] == "sampling" and table["elastic-order8-exponential"]["n_seeds"] == 3
    assert table["xl-cache8"]["failed"] and table["xl-cache8"]["lrs_tried"][0]["lr"] == 1e-3  # trials, no test eval


def test_length_rows_have_every_eval_length_with_accuracy_by_distance(out):
    length = results.collect(out)["length"]["elastic-order8-uniform"]
    assert [x["eval_segments"] for x in length] == [8, 32, 128]
    for x in length:
        assert x["kind"] == "elastic" and x["trained_segments"] == 8 and len(x["seeds"]) == 3
        assert x["accuracy_by_distance"]["2"] == pytest.approx(0.5)  # (0.25 + 0.5 + 0.75) / 3
        assert x["schedules"]["exponential"]["accuracy_by_distance"]["2"] == pytest.approx(0.5)
    assert results.collect(out)["length"]["xl-cache8"] == []


def test_ranking_is_within_the_matched_footprint_and_labels_the_others():
    rows = {"a": {"kind": "elastic", "footprint_floats": 1000, "accuracy_distance_ge_2": 0.5, "sanity_d1_passed": True},
            "b": {"kind": "xl", "footprint_floats": 1200, "accuracy_distance_ge_2": 0.9, "sanity_d1_passed": True},
            "c": {"kind": "rmt", "footprint_floats": 100, "accuracy_distance_ge_2": 0.95, "sanity_d1_passed": True},
            "d": {"kind": "armt", "footprint_floats": 1000, "accuracy_distance_ge_2": 0.99, "sanity_d1_passed": False,
                  "sanity_d1": 0.1},
            "e": {"kind": "none", "footprint_floats": 0, "accuracy_distance_ge_2": 0.06, "sanity_d1_passed": None}}
    ranked, beside = results.ranking(rows, 1000)
    assert ranked == [("b", 0.9), ("a", 0.5), ("e", 0.06)]
    assert beside == ["`c` 0.950 (not ranked: 100 floats: 1/10 of matched)",
                      "`d` 0.990 (not ranked: fails the d=1 sanity task, 0.100 < 0.5)"]
    assert results.label("c", rows["c"], 1000) == "c (100 floats: 1/10 of matched)" and results.label("a", rows["a"], 1000) == "a"


@pytest.mark.slow
def test_write_makes_the_page_json_and_pngs(out, tmp_path):
    dest = tmp_path / "docs" / "results.md"
    (out / "commands.txt").write_text(f"python -m elastic_cli eval --ckpt {out.resolve()}/runs/r --json {reproduce.ROOT}/docs/y.json\n")
    results.write(out, dest)
    page = dest.read_text()
    assert f"python -m elastic_cli eval --ckpt {out}/runs/r --json docs/y.json" in page  # repository-relative
    e = f"{sum(far(a) for a in SEED_ACC.values()) / 3:.3f}"
    assert "| elastic-order8-uniform | matched | 3 |" in page and f"{e} ± " in page
    assert "| xl-cache8 | matched | failed |" in page and "FAILS the 0.5 bar" in page
    assert "This table shows every memory kind at about the same memory footprint" in page
    assert "Ranking within the matched footprint" in page and "Length generalisation" in page
    data = json.loads(dest.with_suffix(".json").read_text())
    assert len(data["mqar"]["elastic-order8-uniform"]["seeds"]) == 3
    assert [x["eval_segments"] for x in data["length"]["elastic-order8-uniform"]] == [8, 32, 128]
    for role in ("distance", "length", "frontier", "sampling", "learning"):
        assert (dest.parent / f"results-{role}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (dest.parent / "results-lm.png").exists() and "Not run in this reproduction" in page  # no LM rows


def test_bins_are_token_weighted_means_and_distance_bins_double():
    xs, ys = results_plots.binned([1.0, 3.0, None, 5.0, 7.0], [1, 3, 0, 2, 2], width=2)
    assert xs == [1.5, 3.5, 5.0]
    assert ys == [(1 * 1 + 3 * 3) / 4, 5.0, 7.0]
    assert results_plots.bins(127) == [(0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127)]
    assert results_plots.bins(7) == [(0, 0), (1, 1), (2, 3), (4, 7)]
    r = {"accuracy_by_distance": {"2": 1.0, "3": 0.0, "9": 0.5}, "tokens_by_distance": {"2": 1, "3": 3, "9": 2}}
    assert results_plots.binned_accuracy(r, 2, 3) == 0.25 and results_plots.binned_accuracy(r, 4, 7) is None


def test_every_kind_keeps_one_colour_and_marker():
    colours = [c for c, _ in results_plots.STYLE.values()]
    markers = [m for _, m in results_plots.STYLE.values()]
    assert len(set(colours)) == len(colours) == len(set(markers)) == 9


@pytest.mark.slow
def test_results_heatmap_panels_and_json(tmp_path):
    import subprocess
    import sys

    from tests.helpers.script_modules import SCRIPTS

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


def test_diagnostics_are_the_last_validation_rows_memory_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 5, "val_loss": 2.0, "val_accuracy": 0.1, "beta/layer0": 0.4, "beta/layer1": 0.3}\n'
        '{"step": 9, "loss": 1.0}\n{"step": 10, "val_loss": 1.5, "val_accuracy": 0.2, "beta/layer0": 0.01, "beta/layer1": 0.5}\n'
        '{"step": 11, "loss": 0.9}\n')
    assert results.diagnostics(tmp_path) == {"beta/layer0": 0.01, "beta/layer1": 0.5}
    assert results.diagnostics(tmp_path / "missing") == {}


def test_length_probes_are_the_matched_weights_read_otherwise_and_the_row_at_twice_the_order(out):
    """`read_probe`'s files (more samples; gauss and power) and the probe row's seeds become rows of
    per-length entries, each the mean over seeds of what the files hold."""
    z, ev = reproduce.SIZES["smoke"], out / "eval"
    name, m = "elastic-order8-uniform", reproduce.PROBE_SAMPLES * 8
    for seed in (0, 1, 2):
        for n in z["lengths"]:
            (ev / f"length-{name}-seed{seed}-seg{n}-samples{m}.json").write_text(json.dumps({"results": [
                mqar_record("elastic", [1.0, 0.5, 0.1 * seed, 0.2], "uniform"), mqar_record("elastic", [1.0, 0.5, 0.6, 0.6], "exponential")]}))
            (ev / f"length-{name}-seed{seed}-seg{n}-schedules.json").write_text(json.dumps({"results": [
                mqar_record("elastic", [1.0, 0.3, 0.3, 0.3], "gauss"), mqar_record("elastic", [1.0, 0.4, 0.4, 0.4], "power")]}))
            (ev / f"length-elastic-order16-uniform-seed{seed}-seg{n}.json").write_text(json.dumps({"results": [
                mqar_record("elastic", [1.0, 0.9, 0.9, 0.9], "uniform")]}))
    table = results.collect(out)
    rows = results.probe_rows(table, z)
    assert list(rows) == ["matched weights: uniform read, 8 samples (as trained)", "same weights: exponential read, 8 samples",
                          "same weights: gauss read, 8 samples", "same weights: power read, 8 samples",
                          f"same weights: uniform read, {m} samples", f"same weights: exponential read, {m} samples",
                          "trained at order 16 (twice the footprint): uniform read, 16 samples"]
    assert [e["eval_segments"] for e in rows[f"same weights: uniform read, {m} samples"]] == [8, 32, 128]
    assert rows[f"same weights: uniform read, {m} samples"][0]["accuracy_by_distance"]["2"] == pytest.approx(0.1)  # (0 + .1 + .2) / 3
    assert rows["same weights: power read, 8 samples"][2]["accuracy_by_distance"]["3"] == pytest.approx(0.4)
    assert rows["trained at order 16 (twice the footprint): uniform read, 16 samples"][1]["spread"]["answer_accuracy"]["n"] == 3
    lines = results.probe_table(rows, 8)
    assert lines[0].endswith("| 32: d >= 8 | 128: d >= 8 |") and len(lines) == 2 + 7


def test_babilong_rows_have_exact_match_by_length_multiple_with_the_spread(tmp_path):
    z = {**reproduce.SIZES["smoke"], "babilong": {**reproduce.SIZES["smoke"]["babilong"], "qa": (1,)}}
    todo = reproduce.variants(z, ["none", "elastic"], ["babilong"])
    assert {v["data"] for v in todo} == {"babilong-qa1"} and {v["kind"] for v in todo} == {"none", "elastic"}
    (tmp_path / "settings.json").write_text(json.dumps({"size": "smoke", "settings": z, "kinds": [], "variants": todo}))
    ev = tmp_path / "eval"
    ev.mkdir()
    e = next(v for v in todo if v["kind"] == "elastic")
    (ev / f"{reproduce.tag(e)}.lrs.json").write_text(json.dumps({"tried": [], "chosen": 1e-3}))
    em = {0: (0.9, 0.5, 0.2), 1: (0.8, 0.4, 0.2), 2: (1.0, 0.6, 0.2)}  # exact match at 1x, 4x, 16x per seed
    depths = [0.0, 0.2, 0.4, 0.6, 0.8]
    for seed, values in em.items():
        for k, x in zip(z["babilong"]["multiples"], values):
            n = k * z["babilong"]["length"]  # seed s: 1 + s documents at depth 0.0 (all right at 1x), 2 at 0.8 (half right)
            heat = {"lengths": [n], "depths": depths, "binned": True, "docs": [[1 + seed], [0], [0], [0], [2]],
                    "accuracy": [[1.0 if k == 1 else 0.0], [None], [None], [None], [0.5]]}
            (ev / f"babilong-qa1-{e['name']}-seed{seed}-x{k}.json").write_text(json.dumps({"results": [
                {"exact_match": x, "answer_token_accuracy": x, "answers": 4, "heatmap": heat,
                 "answer_start": {"right": x, "well_formed": 1 / k, "spans": 4}}]}))
    table = results.collect(tmp_path)["babilong"]["qa1"]
    row = table[e["name"]]
    assert row["n_seeds"] == 3 and row["lr"] == 1e-3 and row["by_length"]["4"]["eval_tokens"] == 4 * z["babilong"]["length"]
    assert row["by_length"]["4"]["exact_match"]["mean"] == pytest.approx(0.5)
    assert row["by_length"]["1"]["exact_match"]["sd"] == pytest.approx(0.1) and row["by_length"]["16"]["exact_match"]["max"] == 0.2
    assert table["none"]["failed"] and table["none"]["heatmap"] is None
    assert row["by_length"]["16"]["well_formed"]["mean"] == pytest.approx(1 / 16)
    said = results.format_sentence(table, list(z["babilong"]["multiples"]))
    assert said.startswith(f"Answers in the task's format at 16x (") and f"`{e['name']}` 0.06." in said
    heat = row["heatmap"]  # the three seeds' documents pooled per (length, depth)
    assert heat["lengths"] == [k * z["babilong"]["length"] for k in z["babilong"]["multiples"]] and heat["depths"] == depths
    assert heat["docs"][0] == [6, 6, 6] and heat["docs"][4] == [6, 6, 6] and heat["docs"][1] == [0, 0, 0]
    assert heat["accuracy"][0] == [1.0, 0.0, 0.0] and heat["accuracy"][4] == [0.5, 0.5, 0.5] and heat["accuracy"][2] == [None] * 3
    lines = results.babilong_table(table, list(z["babilong"]["multiples"]), z["babilong"]["length"])
    assert lines[2] == "| none | 128 | 0 | n/a | n/a | n/a | n/a |"
    assert lines[3].startswith(f"| {e['name']} | 128 | 3 | 0.001 | 0.900 ± 0.100 [0.800–1.000] | 0.500 ± 0.100 ")


def test_a_kind_failing_the_sanity_task_but_answering_d1_in_its_row_is_told_why():
    r = {"kind": "xl", "footprint_floats": 1000, "accuracy_distance_ge_2": 0.2, "sanity_d1_passed": False, "sanity_d1": 0.333,
         "accuracy_by_distance": {"0": 1.0, "1": 1.0, "2": 0.2}, "steps": 1000, "lrs_tried": [], "lr": 1e-3}
    _, beside = results.ranking({"x": r}, 1000)
    assert beside == ["`x` 0.200 (not ranked: fails the d=1 sanity task, 0.333 < 0.5; its matched row answers d=1 at 1.000)"]
    assert "its matched row (1000 steps) answers d=1 at 1.000: the sanity task's shorter budget" in results.tuning_table({"x": r})[2]
    r["accuracy_by_distance"]["1"] = 0.1  # the row cannot answer d = 1 either: no excuse given
    assert results.ranking({"x": r}, 1000)[1] == ["`x` 0.200 (not ranked: fails the d=1 sanity task, 0.333 < 0.5)"]
    assert "its matched row (1000 steps) fails d=1 too (0.100)" in results.tuning_table({"x": r})[2]


def test_pooled_heatmap_cells_weigh_each_eval_by_its_documents():
    a = {"lengths": [128], "depths": [0.0, 0.5], "binned": False, "docs": [[3], [1]], "accuracy": [[1 / 3], [1.0]]}
    b = {"lengths": [128, 512], "depths": [0.0, 0.5], "binned": False, "docs": [[1, 0], [0, 4]], "accuracy": [[1.0, None], [None, 0.25]]}
    got = results.pooled_cells([a, b])
    assert got["lengths"] == [128, 512] and got["docs"] == [[4, 0], [1, 4]]
    assert got["accuracy"] == [[0.5, None], [1.0, 0.25]]  # (1 + 1) / 4 right at depth 0: not the mean of 1/3 and 1
    assert results.pooled_cells([]) is None


def test_a_window_row_takes_its_base_rows_rate_and_is_compared_with_it(tmp_path):
    z = reproduce.SIZES["smoke"]
    todo = [v for v in reproduce.variants(z, ["elastic"], ["babilong", "babilong-ablation"]) if v["data"] == "babilong-qa1"]
    base, window, loss = todo  # the babilong row, then its ablations
    todo = [base, window]
    assert base["group"] == "babilong" and window["ablation"] == "window" and loss["ablation"] == "loss"
    (tmp_path / "settings.json").write_text(json.dumps({"size": "smoke", "settings": z, "kinds": [], "variants": todo}))
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / f"{reproduce.tag(base)}.lrs.json").write_text(json.dumps({"tried": [{"lr": 3e-3}], "chosen": 3e-3}))
    for v, x in ((base, 0.25), (window, 0.5)):
        for seed in z["seeds"]:
            for k in z["babilong"]["multiples"]:
                (ev / f"babilong-qa1-{v['name']}-seed{seed}-x{k}.json").write_text(json.dumps({"results": [
                    {"exact_match": x / k, "answer_token_accuracy": x, "answers": 4}]}))
    for seed in z["seeds"]:  # the base weights read with more samples: uniform, then exponential
        for k in z["babilong"]["multiples"]:
            (ev / f"babilong-qa1-{base['name']}-seed{seed}-x{k}-reads.json").write_text(json.dumps({"results": [
                {"exact_match": 0.1 * seed, "memory": {"schedule": "uniform", "samples": 32}},
                {"exact_match": 0.5 / k, "memory": {"schedule": "exponential", "samples": 32}}]}))
    rows = results.collect(tmp_path)["babilong"]["qa1"]
    reads = rows[base["name"]]["reads"]
    assert reads["uniform read, 32 samples"]["4"]["exact_match"]["mean"] == pytest.approx(0.1)  # (0 + .1 + .2) / 3
    assert reads["exponential read, 32 samples"]["16"]["exact_match"]["sd"] == 0 and "reads" not in rows[window["name"]]
    assert "exponential read, 32 samples: 1x 0.500 (3 seeds), 4x 0.125 (3 seeds)" in results.reads_sentence(rows, [1, 4])
    w = rows[window["name"]]
    assert w["lr"] == 3e-3 and w["lrs_tried"] == [] and rows[base["name"]]["lrs_tried"] == [{"lr": 3e-3}]
    assert w["train_tokens"] == reproduce.BABILONG_WINDOW * z["babilong"]["length"] and w["n_seeds"] == 3
    said = results.ablation_sentence(rows, list(z["babilong"]["multiples"]))
    assert f"`{base['name']}` trained on {w['train_tokens']}-token documents instead of {z['babilong']['length']}" in said
    assert "1x 0.250 -> 0.500, 4x 0.062 -> 0.125, 16x 0.016 -> 0.031" in said
    assert results.ablation_sentence({base["name"]: rows[base["name"]]}, [1]) is None
    rows[loss["name"]] = {**w, "ablation": "loss"}
    assert "trained with the loss on every token instead of the answer alone: 1x 0.250 -> 0.500" in results.ablation_sentence(rows, [1])
