"""lm-evaluation-harness model `elastic` (issue 15), offline on local tasks built from our own prepared
task data: rolling log-likelihood equals `elastic eval`'s total NLL (whole documents through memory),
loglikelihood equals elastic's own scoring, generate_until equals `elastic generate --temperature 0`
cut at a stop string, and the harness's bits per byte equals elastic eval's. Needs the `lm-eval` extra."""
import json
import math
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from elastic_cli.runs import checkpoint  # noqa: E402
from elastic_cli.config import dump_yaml, load_config  # noqa: E402
from elastic_cli.data.loader import PreparedData  # noqa: E402
from elastic_cli.data.tasks import TaskOptions, prepare_task  # noqa: E402
from elastic_cli.interop.lm_eval_model import ElasticLM  # noqa: E402
from tests.helpers.cli_run import run_cli  # noqa: E402
from tests.helpers.eval_run import REPO, TINY, TOKENIZER, segment_logits, sharpen  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """passkey task data (documents of 200 tokens: 13 segments of 16) and a sharpened random checkpoint."""
    from elastic_cli.build import build_model
    from elastic_cli.model.init import init_weights

    root = tmp_path_factory.mktemp("lmeval")
    prepare_task("passkey", 200, 12, str(TOKENIZER), str(root / "data"), TaskOptions(seed=0, val_frac=0.25, test_frac=0.0, dtype="auto", force=False))
    cfg = load_config(REPO / "recipes" / "tiny.yaml", [f"data.path={root / 'data'}", f"data.tokenizer={TOKENIZER}",
                                                       f"run.dir={root / 'run'}", "memory.kind=elastic", *TINY])
    model = build_model(cfg)
    init_weights(model, seed=0)
    checkpoint.save(root / "run", model, torch.optim.AdamW(model.parameters()), {"step": 1}, dump_yaml(cfg), 1)
    sharpen(root / "run")
    return root / "run", root / "data"


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def eval_report(capsys, run, data, *extra):
    code, out, err = run_cli(capsys, "eval", "--ckpt", run, "--data", data, "--json", "-", *extra)
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    return result


def val_texts(data):
    from elastic_cli.data.tokenizer import Tokenizer

    tok, prepared = Tokenizer.load(TOKENIZER), PreparedData(data)
    return [tok.decode([int(t) for t in prepared.tokens(i)][1:-1]) for i in prepared.documents("val")]


def test_rolling_nll_equals_elastic_eval_total_nll(run, capsys):
    run_dir, data = run
    texts = val_texts(data)
    result = eval_report(capsys, run_dir, data, "--batch-size", "1")
    total = result["loss"] * result["tokens"]
    lm = ElasticLM(ckpt=str(run_dir), document_end="true")
    rolling = lm.loglikelihood_rolling([request("loglikelihood_rolling", t) for t in texts])
    n = len(texts)
    assert n == result["docs"] >= 3 and result["tokens"] == n * 199  # whole 200-token documents
    assert abs(-sum(rolling) - total) <= 1e-6
    batched = eval_report(capsys, run_dir, data)  # eval's default batch reads the 3 documents together
    assert abs(-sum(rolling) - batched["loss"] * batched["tokens"]) <= 1e-6 * total
    text_only = ElasticLM(ckpt=str(run_dir)).loglikelihood_rolling([request("loglikelihood_rolling", texts[0])])
    assert math.isfinite(text_only[0]) and text_only[0] > rolling[0]  # the default leaves out log p(EOS) < 0


def test_loglikelihood_equals_elastic_teacher_forcing(run):
    run_dir, data = run
    text = val_texts(data)[0]
    context, continuation = text[:-12], text[-12:]
    lm = ElasticLM(ckpt=str(run_dir))
    (got, greedy), (again, _) = lm.loglikelihood([request("loglikelihood", context, continuation),
                                                  request("loglikelihood", context, continuation)])
    ctx, cont = lm._encode_pair(context, continuation)  # the harness's split (trailing spaces go to the continuation)
    assert lm.tok.decode(ctx[1:]) + lm.tok.decode(cont) == text and ctx[0] == lm.tok.bos_id
    whole = ctx + cont
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(segment_logits(lm.model, ids)[0], dim=-1)  # (n, V)
    want = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
    assert got == again and abs(got - want) <= 1e-4 * abs(want)  # streamed vs teacher-forced: rounding only
    assert greedy == all(int(logp[i - 1].argmax()) == whole[i] for i in range(len(ctx), len(whole)))
    (empty, _), = lm.loglikelihood([request("loglikelihood", "", text)])  # empty context: BOS, as rolling
    (rolled,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert abs(empty - rolled) <= 1e-4 * abs(rolled)


def test_generate_until_equals_elastic_generate_cut_at_stop(run, capsys, tmp_path):
    run_dir, data = run
    context = val_texts(data)[0][:300]
    code, _, err = run_cli(capsys, "generate", "--ckpt", run_dir, "--prompt", context, "--max-new-tokens", "30",
                           "--temperature", "0", "--output", tmp_path / "g.jsonl")
    assert code == 0, err
    text = json.loads((tmp_path / "g.jsonl").read_text())["text"]
    lm = ElasticLM(ckpt=str(run_dir))
    (full,) = lm.generate_until([request("generate_until", context, {"until": [], "max_gen_toks": 30})])
    assert full == text and len(text) > 10
    stop = text[8:11]
    (cut,) = lm.generate_until([request("generate_until", context, {"until": [stop], "max_gen_toks": 30})])
    assert cut == text[: text.index(stop)]


@pytest.mark.slow
def test_lm_eval_cli_on_local_tasks_offline(run, capsys, tmp_path):
    run_dir, data = run
    code, out, err = run_cli(capsys, "lm-eval", "--ckpt", run_dir, "--data", data, "--tasks",
                             "elastic_docs,elastic_answer,elastic_answer_ll", "--model-args", "document_end=true",
                             "--bootstrap-iters", "0", "--json", tmp_path / "r.json")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    result = eval_report(capsys, run_dir, data, "--batch-size", "1")
    assert results["elastic_docs"]["bits_per_byte,none"] == pytest.approx(result["bits_per_byte"], rel=1e-9)
    assert results["elastic_answer"]["exact_match,none"] == result["exact_match"] == 0.0  # random weights
    assert 0 <= results["elastic_answer_ll"]["acc,none"] <= 1 and "elastic_docs" in out


@pytest.mark.slow
def test_lm_eval_usage_errors_exit_2(run, capsys, monkeypatch):
    run_dir, data = run
    code, _, err = run_cli(capsys, "lm-eval", "--ckpt", run_dir, "--tasks", "no_such_task", "--data", data)
    assert code == 2 and "unknown task(s) no_such_task" in err
    code, _, err = run_cli(capsys, "lm-eval", "--ckpt", run_dir, "--tasks", "elastic_docs", "--data", data,
                           "--model-args", "batch=3")
    assert code == 2 and "--model-args: unknown batch" in err
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    code, _, err = run_cli(capsys, "lm-eval", "--ckpt", run_dir, "--tasks", "elastic_docs")
    assert code == 2 and "pip install 'elastic-cli[lm-eval]'" in err


@pytest.fixture(scope="module")
def babilong_run(tmp_path_factory, kjv_books):
    """babilong qa2 documents of 300 tokens in the shipped books (half of them the val split) and a
    random checkpoint with the books tokenizer."""
    from elastic_cli.build import build_model
    from elastic_cli.model.init import init_weights

    root, books = tmp_path_factory.mktemp("lmeval-babilong"), REPO / "tokenizers" / "books-8k.model"
    prepare_task("babilong", 300, 8, str(books), str(root / "data"),
                 TaskOptions(seed=2, val_frac=0.5, test_frac=0.0, options={"haystack": [str(kjv_books)], "qa": 2}))
    cfg = load_config(REPO / "recipes" / "tiny.yaml", [f"data.path={root / 'data'}", f"data.tokenizer={books}",
                                                       f"run.dir={root / 'run'}", "memory.kind=elastic", *TINY])
    model = build_model(cfg)
    init_weights(model, seed=0)
    checkpoint.save(root / "run", model, torch.optim.AdamW(model.parameters()), {"step": 1}, dump_yaml(cfg), 1)
    return root / "run", root / "data", books


def test_answer_rows_of_babilong_data_are_the_solvers_answers(babilong_run):
    """The harness's `elastic_answer` rows on babilong data: one per document, and each answer is what
    the independent bAbI solver recomputes from the row's own context (the facts in the book text)."""
    from elastic_cli.data import babi_solver
    from elastic_cli.data.tokenizer import Tokenizer
    from elastic_cli.interop.lm_eval_tasks import task_rows

    _, data, books = babilong_run
    prepared = PreparedData(data)
    docs, answers, _ = task_rows(prepared, "val", Tokenizer.load(books))
    assert len(answers) == len(docs) == len(prepared.documents("val")) >= 3
    assert [babi_solver.solve(a["context"]) for a in answers] == [a["answer"].strip() for a in answers]


@pytest.mark.slow
def test_lm_eval_answer_task_on_babilong_equals_elastic_eval(babilong_run, capsys, tmp_path):
    run_dir, data, _ = babilong_run
    code, out, err = run_cli(capsys, "lm-eval", "--ckpt", run_dir, "--data", data, "--tasks", "elastic_answer",
                             "--model-args", "document_end=true", "--bootstrap-iters", "0", "--json", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    result = eval_report(capsys, run_dir, data, "--batch-size", "1")
    assert report["results"]["elastic_answer"]["exact_match,none"] == result["exact_match"]
    assert report["n-samples"]["elastic_answer"]["effective"] == result["answers"] == len(PreparedData(data).documents("val"))
