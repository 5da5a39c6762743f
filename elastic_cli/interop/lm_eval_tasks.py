"""`elastic lm-eval`: lm-evaluation-harness tasks on an elastic checkpoint (model: lm_eval_model.py).

Harness tasks come from the harness (or `--include-path DIR` of task YAMLs). `--data DIR` also
writes local tasks from prepared data (a JSONL and task YAMLs in a temporary folder), so a run's
own held-out documents are scored by the harness with no download:
- `elastic_docs` (loglikelihood_rolling): every document of the split, whole;
- `elastic_answer` (generate_until, exact match) and `elastic_answer_ll` (loglikelihood of the
  answer given the text before it): task data (`elastic prepare --task`) only.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from elastic_cli import console
from elastic_cli.runs import inference
from elastic_cli.runs.checkpoint import open_checkpoint
from elastic_cli.atomic import check_writable, make_parents, write_atomic
from elastic_cli.data.compat import check_data
from elastic_cli.data.loader import PreparedData
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError, UsageError

HINT = "pip install 'elastic-cli[lm-eval]' (or: pip install lm_eval)"
ROLLING_METRICS = [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")]


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError(f"lm-eval needs the lm_eval package: {HINT}") from None


def task_rows(data, split: str, tok) -> tuple[list[dict], list[dict], int]:
    """Rows for the local tasks: one per document of `split` (its text, BOS/EOS stripped), one per
    answer span of task data (the text before the answer, and the answer), and the number of documents
    whose text re-encodes to other ids than stored (the harness passes text, so those are scored on
    other tokens than `elastic eval`'s)."""
    docs, answers, differ = [], [], 0
    for i in data.documents(split):
        ids = [int(t) for t in data.tokens(i)]
        docs.append({"name": data.name(i), "text": tok.decode(ids[1:-1])})
        differ += tok.encode(docs[-1]["text"]) != ids[1:-1]
        for start, end, _ in data.answers(i):
            answers.append({"name": data.name(i), "context": tok.decode(ids[1:start]),
                            "answer": tok.decode(ids[start:end]), "answer_tokens": end - start})
    return docs, answers, differ


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _task(name: str, jsonl: Path, **fields) -> dict:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
            "test_split": "test", **fields}


def write_local_tasks(cfg, data_dir: str, split: str, out: Path, tok_path: Path) -> list[str]:
    """Write docs.jsonl (answers.jsonl for task data) and the task YAMLs into `out`; returns the task names."""
    data = PreparedData(data_dir)
    warning = check_data(cfg, data.meta, Path(data_dir), tok_path)
    if warning:
        console.warn(warning)
    rows, answers, differ = task_rows(data, split, Tokenizer.load(tok_path))
    if not rows:
        raise DataError(f"{data_dir} has no documents in split {split!r}")
    if differ:
        console.warn(f"{differ} of {len(rows)} documents re-encode to other tokens than stored: the harness scores "
                     f"their text, so its numbers differ from `elastic eval` on them")
    docs = _jsonl(out / "docs.jsonl", rows)
    tasks = {"elastic_docs": _task("elastic_docs", docs, output_type="loglikelihood_rolling", doc_to_text="",
                                   doc_to_target="{{text}}", metric_list=ROLLING_METRICS)}
    if answers:
        spans = _jsonl(out / "answers.jsonl", answers)
        longest = max(r["answer_tokens"] for r in answers)
        tasks["elastic_answer"] = _task(
            "elastic_answer", spans, output_type="generate_until", doc_to_text="{{context}}",
            doc_to_target="{{answer}}", target_delimiter="",
            generation_kwargs={"until": ["\n"], "max_gen_toks": longest + 2, "do_sample": False},
            metric_list=[{"metric": "exact_match"}])
        tasks["elastic_answer_ll"] = _task(
            "elastic_answer_ll", spans, output_type="loglikelihood", doc_to_text="{{context}}",
            doc_to_target="{{answer}}", target_delimiter="", metric_list=[{"metric": "perplexity"}, {"metric": "acc"}])
    for name, task in tasks.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return list(tasks)


@dataclass(frozen=True)
class LmEvalOptions:
    """Everything `elastic lm-eval` takes (the CLI builds it)."""

    ckpt: str  # a run or checkpoint directory
    tasks: tuple[str, ...]  # harness task names (or the local ones --data writes)
    settings: inference.Settings = inference.Settings()  # key=value, --device, --dtype, --tokenizer
    data: str | None = None  # prepared data as local tasks
    split: str | None = None  # of --data (default: eval.split)
    include_path: str | None = None  # a folder of task YAMLs
    limit: float | None = None  # documents per task (a fraction if < 1)
    num_fewshot: int | None = None
    model_args: str | None = None  # "k=v,..": ElasticLM's MODEL_ARGS
    bootstrap_iters: int = 100000
    out: str | None = None  # JSON of the results


def run(opts: LmEvalOptions) -> dict:
    """Run the harness; prints its table on stdout and returns {"results": ..., "versions": ..., "n-shot": ...}."""
    require_lm_eval()
    import lm_eval  # optional (elastic-cli[lm-eval]): checked just above
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    from elastic_cli.interop.lm_eval_model import ElasticLM, parse_model_args  # imports lm_eval

    json_file = check_writable(opts.out, "--out") if opts.out else None
    if opts.data is None and opts.split is not None:
        raise UsageError("--split applies with --data")
    model_args = parse_model_args(opts.model_args)
    ckpt = open_checkpoint(opts.ckpt, opts.settings.tokenizer)
    cfg = inference.configure(ckpt, opts.settings)
    tok_path = ckpt.require_tokenizer()
    with tempfile.TemporaryDirectory(prefix="elastic-lm-eval-") as tmp:
        paths = [opts.include_path] if opts.include_path else []
        if opts.data is not None:
            write_local_tasks(cfg, opts.data, opts.split or cfg.eval.split, Path(tmp), tok_path)
            paths.append(tmp)
        manager = TaskManager(include_path=paths, include_defaults=False) if paths else None
        if manager is None or any(t not in manager.all_tasks for t in opts.tasks):  # harness tasks: index them all (slow)
            manager = TaskManager(include_path=paths or None)
        unknown = [t for t in opts.tasks if t not in manager.all_tasks]
        if unknown:
            local = " (--data DIR adds elastic_docs, and for task data elastic_answer, elastic_answer_ll)"
            raise UsageError(f"--tasks: unknown task(s) {', '.join(unknown)}{local}")
        lm = ElasticLM(ckpt, opts.settings, **model_args)
        out = lm_eval.simple_evaluate(model=lm, tasks=list(opts.tasks), task_manager=manager, limit=opts.limit,
                                      num_fewshot=opts.num_fewshot, bootstrap_iters=opts.bootstrap_iters,
                                      log_samples=False)
    console.out(make_table(out))
    report = {"checkpoint": str(ckpt.path), **{k: out.get(k) for k in ("results", "versions", "n-shot", "n-samples", "configs")}}
    if json_file is not None:
        write_atomic(make_parents(json_file), (json.dumps(report, indent=1, default=str) + "\n").encode())
        console.info(f"wrote {json_file}")
    return report
