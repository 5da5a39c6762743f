"""scripts/reproduce.py: every kind has a matched row at the matched footprint (rmt states its own),
matched rows train with every seed and learning rate, the recurrent kinds with a valid curriculum,
the sanity and length datasets are what the page says, and --plan counts the runs."""
import json

import pytest

from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.memory import REGISTRY
from tests.helpers.script_modules import reproduce

CPU = reproduce.SIZES["cpu"]


def config(z, v, lr=3e-3, seed=0, steps=None, dataset=None):
    args = reproduce.train_args(z, v, reproduce.ROOT / "data", reproduce.ROOT / "runs" / "x", lr, seed, steps, dataset)
    return load_config(args[1], [a for a in args[2:] if a != "--overwrite"])


def test_every_kind_has_a_matched_row_at_the_matched_footprint():
    rows = [v for v in reproduce.variants(CPU, sorted(REGISTRY), "mqar") if v["group"] == "matched"]
    assert sorted(v["kind"] for v in rows) == sorted(REGISTRY)
    matched = reproduce.matched_floats(CPU)
    assert matched == 16384
    floats = {}
    for v in rows:
        model = build_model(config(CPU, v))
        floats[v["name"]] = model.numel(model.empty_states(1, "cpu"))
    assert floats == {"none": 0, "elastic-order32-uniform": 16384, "xl-cache32": 16384,
                      "memorizing-store48-cache16": 16384, "melodi-short24-long16": 16384,
                      "infinity-basis64": 16386, "armt-keydim11": 17030, "caching-armt-keydim3": 19608,
                      "rmt-tokens8": 1024}  # rmt: 128 tokens would match at 18x elastic's cost; the page says so


def test_matched_rows_train_each_seed_and_lr_with_the_same_steps_and_a_curriculum_where_due():
    rows = {v["kind"]: v for v in reproduce.variants(CPU, sorted(REGISTRY), "mqar") if v["group"] == "matched"}
    for kind, v in rows.items():
        cfg = config(CPU, v, lr=1e-3, seed=2)
        t = cfg.train
        assert (t.lr, t.min_lr, t.seed, t.steps, t.segments) == (1e-3, 1e-4, 2, CPU["steps"], 8)
        if kind in ("rmt", "armt", "caching"):
            assert [list(c) for c in t.curriculum] == [[0, 2], [175, 4], [350, 8]]
        else:
            assert t.curriculum == []
    sanity = config(CPU, rows["armt"], steps=CPU["sanity_steps"], dataset="mqar-d1")
    assert sanity.data.path.endswith("mqar-d1") and sanity.train.steps == 300
    assert [list(c) for c in sanity.train.curriculum] == [[0, 2], [75, 4], [150, 8]]
    assert reproduce.trials(CPU) == [(1e-3, 0), (3e-3, 0)]


def test_melodi_fifo_spans_the_training_document_and_memorizing_keeps_an_xl_cache():
    rows = {v["kind"]: v for v in reproduce.variants(CPU, ["melodi", "memorizing"], "mqar") if v["group"] == "matched"}
    m = config(CPU, rows["melodi"]).memory
    assert m.long_store == m.long_tokens * 8 and m.summary_tokens == 8
    assert config(CPU, rows["memorizing"]).memory.cache == CPU["seg"]


def test_datasets_sanity_d1_and_new_seed_documents_of_every_eval_length():
    sets = reproduce.datasets(CPU)
    assert sets["mqar-d1"][sets["mqar-d1"].index("--distance") + 1] == "1:1"
    for n, docs in zip(CPU["lengths"], CPU["length_docs"]):
        args = sets[f"mqar-len{n}"]
        assert args[args.index("--length") + 1] == str(16 * n) and args[args.index("--seed") + 1] == "1"
        assert args[args.index("--distance") + 1] == f"0:{n - 1}"
        assert int(args[args.index("--count") + 1]) * 0.5 >= docs  # the test split holds the eval documents
    assert sets["mqar"][sets["mqar"].index("--seed") + 1] == "0"


def test_plan_counts_trials_seeds_sanity_and_single_rows(capsys):
    z = reproduce.SIZES["cpu-seeds"]
    todo = reproduce.variants(z, sorted(REGISTRY), None)
    runs, minutes = reproduce.plan(z, todo)
    matched = [v for v in todo if v["group"] == "matched"]
    babilong = [v for v in todo if v["group"] == "babilong"]
    probes = [v for v in todo if v["group"] == "probe"]
    ablations = [v for v in todo if v["group"] == "babilong-ablation"]  # every seed at its base row's rate
    window = [v for v in ablations if v["ablation"] == "window"]
    singles = [v for v in todo if v["group"] not in ("matched", "babilong", "probe", "babilong-ablation")]
    per_row = len(z["lrs"]) + len(z["seeds"]) - 1  # the trials, then the other seeds at the chosen rate
    assert len(runs) == ((len(matched) + len(babilong)) * per_row + (len(matched) - 1)
                         + (len(probes) + len(ablations)) * len(z["seeds"]) + len(singles))
    assert len(matched) == 9 and len(babilong) == 9 * len(z["babilong"]["qa"]) and len(probes) == 1
    assert len(ablations) == 2 * len(window) == 2 * len(reproduce.ABLATION_KINDS) * len(z["babilong"]["qa"])
    _, short = reproduce.plan(z, [v for v in todo if v["group"] == "babilong" and v["kind"] in reproduce.ABLATION_KINDS])
    _, long = reproduce.plan(z, window)  # 4x the tokens a step, no trials (3 runs a row against 4), more evals
    assert long == pytest.approx(short * reproduce.BABILONG_WINDOW * 3 / 4, rel=0.15)
    assert {v["group"] for v in singles} == {"control", "ablation", "lm"}
    _, mqar_minutes = reproduce.plan(z, reproduce.variants(z, sorted(REGISTRY), ["mqar"]))
    assert 250 < mqar_minutes < 450 and minutes > mqar_minutes  # mqar: about 370 core-minutes at 1000 steps
    assert reproduce.main(["--size", "cpu-seeds", "--plan"]) == 0
    assert "core-minutes" in capsys.readouterr().out


@pytest.mark.parametrize("size", sorted(reproduce.SIZES), ids=lambda s: f"size-{s}")  # "gpu" alone reads as the marker
def test_every_size_has_the_settings_the_pipeline_reads(size):
    z = reproduce.SIZES[size]
    assert len(z["seeds"]) >= 3 and len(z["lrs"]) >= 2 and list(z["lengths"]) == [8, 32, 128]
    assert len(z["length_docs"]) == len(z["lengths"]) and z["length"] // z["seg"] == 8


def test_settings_join_the_rows_of_every_invocation_at_the_same_settings(tmp_path):
    z, path = reproduce.SIZES["smoke"], tmp_path / "settings.json"
    mqar, probe = reproduce.variants(z, ["elastic"], ["mqar"]), reproduce.variants(z, ["elastic"], ["probe"])
    reproduce.write_settings(path, {"size": "smoke", "settings": z, "kinds": ["elastic"], "only": ["mqar"], "variants": mqar})
    reproduce.write_settings(path, {"size": "smoke", "settings": z, "kinds": ["none"], "only": ["probe"], "variants": probe})
    got = json.loads(path.read_text())
    assert [v["name"] for v in got["variants"]] == [v["name"] for v in reproduce.dedupe(mqar)]  # the probe row was among mqar's
    assert got["kinds"] == ["elastic", "none"] and got["only"] == ["mqar", "probe"]
    other = {**z, "steps": z["steps"] + 1}  # other settings: this invocation's rows alone
    reproduce.write_settings(path, {"size": "smoke", "settings": other, "kinds": ["none"], "only": ["probe"], "variants": probe})
    assert [v["name"] for v in json.loads(path.read_text())["variants"]] == [v["name"] for v in probe]


def test_babilong_invocations_of_other_tasks_and_kinds_join_into_one_settings(tmp_path):
    path = tmp_path / "settings.json"
    z = {**reproduce.SIZES["smoke"], "babilong": {**reproduce.SIZES["smoke"]["babilong"], "qa": (1,), "kinds": ["none"]}}
    z2 = {**z, "babilong": {**z["babilong"], "qa": (2,), "kinds": ["xl", "none"]}}
    first, second = reproduce.variants(z, ["none"], ["babilong"]), reproduce.variants(z2, ["none"], ["babilong"])
    reproduce.write_settings(path, {"size": "smoke", "settings": z, "kinds": ["none"], "only": ["babilong"], "variants": first})
    reproduce.write_settings(path, {"size": "smoke", "settings": z2, "kinds": ["none"], "only": ["babilong"], "variants": second})
    got = json.loads(path.read_text())
    assert sorted(v["name"] + v["data"] for v in got["variants"]) == sorted(
        v["name"] + v["data"] for v in first + second)  # none-qa1, none-qa2, xl-qa2
    assert got["settings"]["babilong"]["qa"] == [1, 2] and got["settings"]["babilong"]["kinds"] == ["none", "xl"]
    every = {**z2, "babilong": {k: x for k, x in z2["babilong"].items() if k != "kinds"}}  # every kind: no kinds kept
    reproduce.write_settings(path, {"size": "smoke", "settings": every, "kinds": ["none"], "only": ["babilong"], "variants": second})
    assert "kinds" not in json.loads(path.read_text())["settings"]["babilong"]
    steps = {**z, "babilong": {**z["babilong"], "steps": 7}}  # how a row runs: this invocation's rows alone
    reproduce.write_settings(path, {"size": "smoke", "settings": steps, "kinds": ["none"], "only": ["babilong"], "variants": first})
    assert len(json.loads(path.read_text())["variants"]) == len(first)


def test_ablation_rows_train_on_longer_documents_or_every_token_at_their_base_rows_rate(tmp_path):
    z = reproduce.SIZES["smoke"]
    row, loss = [v for v in reproduce.variants(z, ["elastic"], ["babilong-ablation"]) if v["data"] == "babilong-qa1"]
    w, b = reproduce.BABILONG_WINDOW, z["babilong"]
    assert row["base"] == reproduce.memory("elastic", {**z, "length": b["length"], "seg": b["seg"]})[0]
    assert row["train_data"] == f"babilong-qa1-w{w}" and row["shape"]["segments"] == w * b["length"] // b["seg"]
    args = reproduce.train_args(z, row, tmp_path, tmp_path / "r", 1e-3, 0, dataset=row["train_data"])
    assert f"train.segments={w * b['length'] // b['seg']}" in args and f"train.bptt_segments={w * b['length'] // b['seg']}" in args
    assert f"data.path={tmp_path / row['train_data']}" in args and f"model.segment_len={b['seg']}" in args
    sets = reproduce.babilong_datasets(z)[row["train_data"]]
    assert sets[sets.index("--length") + 1] == str(w * b["length"]) and sets[sets.index("--seed") + 1] == "0"
    assert [v for v in reproduce.variants(z, ["xl"], ["babilong-ablation"])] == []  # only the kinds of ABLATION_KINDS
    assert loss["base"] == row["base"] and loss["ablation"] == "loss" and "train_data" not in loss
    args = reproduce.train_args(z, loss, tmp_path, tmp_path / "r", 1e-3, 0)
    assert args.index("train.loss_on=all") > args.index("train.loss_on=answers")  # the override comes last


def test_babilong_reads_evaluate_the_trained_weights_with_more_samples_at_every_multiple(tmp_path):
    z = reproduce.SIZES["smoke"]
    (row,) = [v for v in reproduce.variants(z, ["elastic"], ["babilong"]) if v["data"] == "babilong-qa1"]
    calls = []

    class Recorder:  # a Runner that records what it would run
        out = tmp_path

        def __call__(self, log, *args):
            calls.append(args)
            return 0

    (tmp_path / "eval").mkdir()
    reproduce.babilong_reads(Recorder(), z, row, tmp_path / "data", 1e-3, 2)
    assert calls == []  # not trained: nothing to read
    (tmp_path / "eval" / f"{reproduce.tag(row, 1e-3, 2)}.trained").write_text("")
    reproduce.babilong_reads(Recorder(), z, row, tmp_path / "data", 1e-3, 2)
    assert len(calls) == len(z["babilong"]["multiples"])
    for k, docs, args in zip(z["babilong"]["multiples"], z["babilong"]["docs"], calls):
        assert args[args.index("--data") + 1] == str(tmp_path / "data" / f"babilong-qa1-x{k}")
        assert args[args.index("--samples") + 1] == str(reproduce.PROBE_SAMPLES * z["order"])
        assert args[args.index("--compare-schedules") + 1] == "uniform,exponential"
        assert args[args.index("--max-docs") + 1] == str(docs)
        assert args[args.index("--json") + 1].endswith(f"babilong-qa1-{row['name']}-seed2-x{k}-reads.json")


def test_a_babilong_task_longer_than_the_length_trains_and_is_evaluated_at_its_own_length(tmp_path):
    z = reproduce.SIZES["smoke"]
    b, n = z["babilong"], int(reproduce.QA_LENGTHS["2"])
    assert reproduce.babilong_length(b, 1) == b["length"] and reproduce.babilong_length(b, 2) == n
    rows = {v["data"]: v for v in reproduce.variants(z, ["elastic"], ["babilong"])}
    assert rows["babilong-qa2"]["shape"]["segments"] == n // b["seg"] and rows["babilong-qa2"]["length"] == n
    assert rows["babilong-qa1"]["shape"]["segments"] == b["length"] // b["seg"]
    sets = reproduce.babilong_datasets(z)
    for k in b["multiples"]:
        args = sets[f"babilong-qa2-x{k}"]
        assert args[args.index("--length") + 1] == str(k * n)
    args = reproduce.train_args(z, rows["babilong-qa2"], tmp_path, tmp_path / "r", 1e-3, 0)
    assert f"train.segments={n // b['seg']}" in args


def test_every_group_is_run_once_as_a_single_row_or_by_its_own_phase():
    groups = {v["group"] for v in reproduce.variants(reproduce.SIZES["cpu"], sorted(REGISTRY), None)}
    assert set(reproduce.SINGLE_GROUPS) <= groups
    # the others have their own runners in main's second phase (an ablation row is not also trained as a single)
    assert groups - set(reproduce.SINGLE_GROUPS) == {"matched", "babilong", "probe", "babilong-ablation"}
