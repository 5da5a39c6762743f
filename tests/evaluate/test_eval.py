"""Eval metrics from closed forms, the scoring loop against a per-document reference, and the
`elastic eval` command on a tiny trained run."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elastic_cli.evaluate.job import bits_per_byte, perplexity
from elastic_cli.evaluate.scoring import Scoring, Tally, score
from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights


def test_perplexity_and_bits_per_byte_closed_forms():
    assert perplexity(7 * math.log(13), 7) == pytest.approx(13)
    # a uniform byte model (256 choices per byte, one token per byte) costs exactly 8 bits per byte
    assert bits_per_byte(100 * math.log(256), 100) == pytest.approx(8.0)
    # 3 tokens of 2 nats each over 12 bytes: 6 / (12 ln 2) bits per byte
    assert bits_per_byte(6.0, 12) == pytest.approx(6 / (12 * math.log(2)))


class Successor:
    """Predicts token+1 (mod V) with logit c, but only once its memory (tokens read) is non-empty;
    before that, uniform logits. Closed-form NLLs: ln V, or with c = ln(V-1): ln 2 (hit), ln(2(V-1)) (miss)."""

    def __init__(self, vocab, segment_len):
        self.V, self.segment_len, self.c = vocab, segment_len, math.log(vocab - 1)

    def empty_states(self, batch, device):
        return (torch.zeros(batch, dtype=torch.long, device=device),)

    def __call__(self, tokens, states):
        (seen,) = states
        logits = torch.zeros(*tokens.shape, self.V)
        hit = F.one_hot((tokens + 1) % self.V, self.V).float() * self.c
        logits += hit * (seen > 0).float()[:, None, None]
        return logits, (seen + tokens.shape[1],)


def test_score_closed_form_segments_reset_and_exact_match():
    V, L = 10, 4
    a = np.arange(10)  # every next token is token+1: hits once memory is non-empty
    b = np.full(6, 5)  # next token is always 5, the model predicts 6: misses
    answers = [(5, 8), (2, 4)]  # a's answer lies in segment 1 (argmax right); b's in segment 0 (uniform: argmax 0)
    for batch in (1, 2):
        t = score(Successor(V, L), [a, b], answers, batch, torch.device("cpu"))
        ln2, miss = math.log(2), math.log(2 * (V - 1))
        # segment 0: 4 + 4 targets at ln V; segment 1: a's 4 hits + b's 1 miss; segment 2: a's last target
        assert t.seg_tokens == [8, 5, 1]
        assert t.loss_by_segment() == pytest.approx([math.log(V), (4 * ln2 + miss) / 5, ln2])
        assert t.tokens == 14 and t.nll == pytest.approx(8 * math.log(V) + 5 * ln2 + miss)
        assert (t.answers, t.exact) == (2, 1)
        # answer tokens: a's 3 (segment 1, hits at ln 2), b's 2 (segment 0, uniform: argmax 0 misses, ln V)
        assert (t.answer_tokens, t.answer_correct) == (5, 3)
        assert t.answer_nll == pytest.approx(3 * ln2 + 2 * math.log(V))
        # how the answers begin: a's with 5 (argmax 5), b's with 5 (uniform: argmax 0, which begins no answer)
        assert sorted(t.starts) == [(5, 0), (5, 5)]
        assert t.start_report() == {"right": 0.5, "well_formed": 0.5, "spans": 2}
    assert Tally().start_report() is None


def test_answer_starts_count_a_wrong_answer_in_the_tasks_format_as_well_formed():
    t = Tally(starts=[(1, 1), (2, 1), (3, 9), (-1, -1)])  # right; another answer's start; no answer's; unread
    assert t.start_report() == {"right": pytest.approx(1 / 3), "well_formed": pytest.approx(2 / 3), "spans": 3}


def test_tally_skips_masked_tokens():
    t = Tally()
    nll = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    t.add_segment(1, nll, nll < 50)
    assert (t.nll, t.tokens, t.seg_tokens, t.loss_by_segment()) == (6.0, 3, [0, 3], [None, 2.0])


def test_score_of_batched_documents_equals_one_document_at_a_time():
    V, D, SEG = 29, 16, 5
    mems = {i: REGISTRY["elastic"](2, D // 2, order=6, samples=4) for i in range(2)}
    m = Decoder(DecoderShape(V, D, 2, 2, 24, SEG), mems).eval()
    init_weights(m, seed=1)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, V, n) for n in (3, 17, 11, 5, 23)]
    got = score(m, docs, [None] * 5, 3, torch.device("cpu"))
    nll, per_seg = 0.0, {}
    with torch.no_grad():
        for d in docs:
            x = torch.from_numpy(d)[None]
            states = m.empty_states(1, "cpu")
            for s in range(0, len(d), SEG):
                logits, states = m(x[:, s : s + SEG], states)
                tgt = x[0, s + 1 : s + SEG + 1]
                lp = -torch.log_softmax(logits[0, : len(tgt)].double(), -1)[torch.arange(len(tgt)), tgt]
                nll += lp.sum().item()
                per_seg.setdefault(s // SEG, []).extend(lp.tolist())
    assert got.tokens == sum(len(d) - 1 for d in docs)
    assert got.nll == pytest.approx(nll, rel=1e-5)
    assert got.loss_by_segment() == pytest.approx([np.mean(per_seg[i]) for i in sorted(per_seg)], rel=1e-5)


# ------------------------------------------------------------------ the command, on a tiny run

import json  # noqa: E402
import shutil  # noqa: E402

from tests.helpers.cli_run import run_cli  # noqa: E402
from tests.helpers.eval_run import REPO, TOKENIZER  # noqa: E402


def without_speed(report):
    return {**report, "results": [{k: v for k, v in r.items() if k != "speed"} for r in report["results"]]}


@pytest.mark.slow
def test_eval_json_is_deterministic_and_consistent(tiny_model, capsys):
    code, out1, _ = run_cli(capsys, "eval", "--ckpt", tiny_model, "--json", "-", "--batch-size", "2")
    assert code == 0
    code, out2, _ = run_cli(capsys, "eval", "--ckpt", tiny_model, "--json", "-", "--batch-size", "3")
    a, b = json.loads(out1), json.loads(out2)
    assert json.dumps(without_speed(a)) == json.dumps(without_speed(b))
    meta = json.loads((tiny_model.parent / "data" / "meta.json").read_text())
    val = [d for d in meta["docs"] if d["split"] == "val"]
    (r,) = a["results"]
    assert r["docs"] == len(val) == 3 and r["bytes"] == sum(d["bytes"] for d in val)
    assert r["tokens"] == sum(d["tokens"] - 1 for d in val) == sum(r["tokens_by_segment"])
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert r["bits_per_byte"] == pytest.approx(r["loss"] * r["tokens"] / (math.log(2) * r["bytes"]))
    assert r["loss"] == pytest.approx(sum(l * n for l, n in zip(r["loss_by_segment"], r["tokens_by_segment"]))
                                      / r["tokens"])
    assert r["exact_match"] is None and r["speed"]["peak_memory_kind"] == "cpu_peak_rss"
    assert r["speed"]["tokens_per_s"] > 0


@pytest.mark.slow
def test_compare_schedules_side_by_side_same_weights(tiny_model, capsys, tmp_path):
    code, out, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--compare-schedules",
                             "uniform,exponential,gauss", "--samples", "4", "--json", tmp_path / "r.json",
                             "--plot", tmp_path / "c.png")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    res = report["results"]
    assert [r["memory"]["schedule"] for r in res] == ["uniform", "exponential", "gauss"]
    assert all(r["memory"]["samples"] == 4 for r in res)
    # segment 1 has an empty memory: identical under every schedule; later segments read memory
    first = [r["loss_by_segment"][0] for r in res]
    assert first[0] == first[1] == first[2]
    assert len({round(r["loss"], 12) for r in res}) == 3
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "elastic exponential M=4" in out and "loss, segment 1" in out


def test_eval_errors_exit_codes(tiny_model, capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "--ckpt", tmp_path / "nope")
    assert code == 3 and f"{tmp_path / 'nope'} does not exist" in err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (next((broken / "checkpoints").glob("step_*")) / "COMPLETE").unlink()
    code, _, err = run_cli(capsys, "eval", "--ckpt", broken)
    assert code == 3 and "no complete checkpoint" in err
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    ckpt = next((other / "checkpoints").glob("step_*"))
    (ckpt / "config.yaml").write_text((ckpt / "config.yaml").read_text().replace("d_model: 32", "d_model: 64"))
    code, _, err = run_cli(capsys, "eval", "--ckpt", other)
    assert code == 3 and f"checkpoint file {ckpt / 'config.yaml'} is truncated or corrupted" in err
    (ckpt / "COMPLETE").write_text("")  # a checkpoint from before checksums: only the weights can object
    code, _, err = run_cli(capsys, "eval", "--ckpt", other)
    assert code == 3 and "does not fit" in err
    (tmp_path / "a-file").write_text("")
    code, _, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--json", tmp_path / "a-file" / "r.json")
    assert code == 2 and "a-file is not a directory" in err
    code, _, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--compare-sampling", "uniform,spiral")
    assert code == 2 and "spiral" in err
    assert err.startswith("error: ") and err.count("\n") == 1  # one line, no traceback


def test_eval_refuses_data_made_with_another_tokenizer(tiny_model, capsys, tmp_path):
    from elastic_cli.data.prepare import PrepareOptions, prepare

    prepare([str(tiny_model.parent / "src")], str(REPO / "tokenizers" / "books-8k.model"),
            str(tmp_path / "books"), PrepareOptions(val_frac=0.5, test_frac=0.2, workers=1))
    code, _, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--data", tmp_path / "books")
    assert code == 3 and "tokenizer" in err


def test_eval_task_data_reports_exact_match(tiny_model, capsys, tmp_path):
    from elastic_cli.data.tasks import TaskOptions, prepare_task

    prepare_task("passkey", 96, 6, str(TOKENIZER), str(tmp_path / "passkey"), TaskOptions(val_frac=0.5, test_frac=0.0))
    meta = json.loads((tmp_path / "passkey" / "meta.json").read_text())
    val = [d for d in meta["docs"] if d["split"] == "val"]
    assert val and all(len(d.get("answers", [])) == 1 for d in val)
    code, out, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--data", tmp_path / "passkey", "--json",
                             "-")
    assert code == 0, err
    (r,) = json.loads(out)["results"]
    assert r["answers"] == len(val) and 0 <= r["exact_match"] <= 1
    assert r["exact_match"] <= r["answer_token_accuracy"] <= 1 and r["answer_loss"] > 0


def test_eval_other_memory_kind_and_schedule_only_for_elastic(capsys, tiny_model_of):
    run = tiny_model_of("none")
    code, out, err = run_cli(capsys, "eval", "--ckpt", run, "--json", "-", "--max-docs", "1")
    assert code == 0, err
    assert json.loads(out)["results"][0]["memory"] == {"kind": "none"}
    code, _, err = run_cli(capsys, "eval", "--ckpt", run, "--sampling", "exponential")
    assert code == 2 and "memory.kind=elastic" in err


def test_cli_schedule_choices_are_the_memory_schedules():
    from elastic_cli.cli.model import Schedule
    from elastic_cli.errors import UsageError
    from elastic_cli.memory.sampling import SCHEDULES

    assert [Schedule().convert(name, None, None) for name in SCHEDULES] == list(SCHEDULES)
    assert Schedule(many=True).convert(" gauss,power ", None, None) == ["gauss", "power"]
    with pytest.raises(UsageError, match="unknown schedule"):
        Schedule().convert("spiral", None, None)


@pytest.mark.parametrize("kind", ["none", "elastic", "xl"])
def test_long_context_gain_is_zero_without_memory_or_history(kind):
    """gain = NLL(memory emptied every segment) - NLL(memory carried): exactly 0 for `none` and for
    one-segment documents of any kind; not 0 for a memory on longer documents."""
    from elastic_cli.evaluate.job import gain_report
    from tests.helpers.memory_checks import SEG, build

    options = {"none": {}, "elastic": {"order": 6, "samples": 4}, "xl": {"cache": 5}}[kind]
    model = build(kind, boost=3.0, **options).eval()
    rng = np.random.default_rng(0)
    short = [rng.integers(0, 30, n) for n in (SEG, SEG - 2, 3)]
    long = [rng.integers(0, 30, n) for n in (4 * SEG, 3 * SEG + 1)]
    one = score(model, short, [None] * 3, 2, torch.device("cpu"), Scoring(gain=True))
    assert one.gain == 0.0 and one.key_tokens == 0 and one.gain_tokens == one.tokens
    many = score(model, long, [None] * 2, 2, torch.device("cpu"), Scoring(gain=True))
    assert (many.gain == 0.0) == (kind == "none")
    report = gain_report(many)
    assert report["mean_nats"] == pytest.approx(many.gain / many.tokens) and 0 <= report["key_fraction"] <= 1


def test_answers_by_distance_count_segments_between_fact_and_question():
    """Successor model (closed form): answers at input positions in segment 1 with facts in segments 0 and 1."""
    V, L = 10, 4
    a = np.arange(10)
    # span [5, 7): predicted from positions 4, 5 (segment 1), fact at 1 (segment 0) -> distance 1;
    # span [8, 9): position 7 (segment 1), fact at 6 (segment 1) -> distance 0
    t = score(Successor(V, L), [a], [[(5, 7, 1), (8, 9, 6)]], 1, torch.device("cpu"))
    assert t.distance_report() == {"0": {"tokens": 1, "accuracy": 1.0, "loss": pytest.approx(math.log(2))},
                                   "1": {"tokens": 2, "accuracy": 1.0, "loss": pytest.approx(math.log(2))}}
    assert (t.answers, t.exact) == (2, 2)


def test_eval_task_data_by_distance_json_and_plot(tiny_model, capsys, tmp_path):
    """mqar through the CLI: accuracy by distance in the task's own segment unit, and --plot draws it."""
    from elastic_cli.data.tasks import TaskOptions, prepare_task

    prepare_task("mqar", 64, 8, str(TOKENIZER), str(tmp_path / "mq"), TaskOptions(
        val_frac=0.5, test_frac=0.0, options={"pairs": 3, "segment_len": 8, "distance": (1, 3), "keys": 8, "values": 8}))
    code, out, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--data", tmp_path / "mq", "--json", "-",
                             "--plot", tmp_path / "d.png")
    assert code == 0, err
    (r,) = json.loads(out)["results"]
    by_d = r["answer_by_distance"]
    assert set(by_d) <= {"1", "2", "3"} and sum(v["tokens"] for v in by_d.values()) == r["answers"]  # 1 token each
    assert sum(v["tokens"] * v["accuracy"] for v in by_d.values()) == pytest.approx(
        r["answer_token_accuracy"] * sum(v["tokens"] for v in by_d.values()))
    assert r["long_context_gain"] is None and r["xz_bits_per_byte"] is None  # task data: recall, not LM
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_cells_closed_form():
    from elastic_cli.evaluate import heatmap

    docs = [{"tokens": t, "depth": d} for t, d in [(100, 0.0), (100, 0.04), (200, 0.5), (200, 0.52), (100, 1.0),
                                                   (200, 0.98), (100, None)]]
    exact = {0: [True], 1: [False], 2: [True, True], 3: [True, False], 4: [True], 5: [False], 6: [True]}
    grid = heatmap.cells({"docs": docs, "task": {"options": {"depth": "0,0.5,1"}}}, list(range(7)), exact)
    assert grid["lengths"] == [100, 200] and grid["depths"] == [0.0, 0.5, 1.0] and not grid["binned"]
    assert grid["docs"] == [[2, 0], [0, 2], [1, 1]]
    assert grid["accuracy"] == [[0.5, None], [None, 0.5], [1.0, 0.0]]
    binned = heatmap.cells({"docs": docs, "task": {"options": {"depth": "0:1"}}}, [0, 2, 4, 5], {0: [True], 1: [True],
                                                                                                2: [False], 3: [True]})
    assert binned["binned"] and binned["depths"] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert binned["docs"] == [[1, 0], [0, 0], [0, 1], [0, 0], [1, 1]]
    assert binned["accuracy"][4] == [0.0, 1.0] and binned["accuracy"][2] == [None, 1.0]


@pytest.mark.slow
def test_eval_heatmap_json_png_and_per_document_twin(tiny_model, capsys, tmp_path, kjv_books):
    """Cells from the batched eval equal cells built by hand from each document scored alone."""
    from elastic_cli.runs import inference
    from elastic_cli.data.loader import PreparedData
    from elastic_cli.data.tasks import TaskOptions, prepare_task

    prepare_task("niah-multivalue", [224, 320], 16, str(TOKENIZER), str(tmp_path / "h"), TaskOptions(
        val_frac=0.6, test_frac=0.0, options={"haystack": [str(kjv_books)], "depth": "0,1", "needles": 2}))
    code, out, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--data", tmp_path / "h", "--json", "-",
                             "--heatmap", tmp_path / "heat.png", "--batch-size", 3)
    assert code == 0, err
    (r,) = json.loads(out)["results"]
    grid = r["heatmap"]
    data = PreparedData(tmp_path / "h")
    loaded = inference.load_checkpoint(str(tiny_model))
    right = {}
    for i in data.documents("val"):
        doc = data.meta["docs"][i]
        t = score(loaded.model, [np.asarray(data.tokens(i))], [data.answers(i)], 1, loaded.device)
        cell = (grid["depths"].index(round(doc["depth"])), grid["lengths"].index(doc["tokens"]))
        right.setdefault(cell, []).append(t.exact == t.answers == 2)
    assert sum(map(len, right.values())) == len(data.documents("val")) == sum(map(sum, grid["docs"]))
    for (row, col), oks in right.items():
        assert grid["docs"][row][col] == len(oks) and grid["accuracy"][row][col] == sum(oks) / len(oks)
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(json.loads((tmp_path / "heat.json").read_text()).values()) == [grid]
    code, _, err = run_cli(capsys, "eval", "--ckpt", tiny_model, "--heatmap", tmp_path / "no.png")
    assert code == 3 and "records no depths" in err and not (tmp_path / "no.png").exists()
