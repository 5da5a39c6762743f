"""The model card (README.md) of an export: memory kind and options, model size, training data and
steps, and the eval numbers found in the run directory (`metrics.jsonl` validation losses and any
`elastic eval --json` report saved there). Nothing is typed in by hand."""
from __future__ import annotations

import json
from pathlib import Path

from elastic_cli.config import memory_layers


def run_dir_of(ckpt: Path) -> Path | None:
    """runs/X for runs/X/checkpoints/step_N; None for a checkpoint outside a run directory."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def eval_lines(run_dir: Path | None) -> list[str]:
    """Markdown bullets: the last validation loss in metrics.jsonl, and every eval report in the run dir."""
    if run_dir is None:
        return []
    lines = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
        val = [r for r in records if "val_loss" in r]
        if val:
            lines.append(f"- validation loss during training (`metrics.jsonl`, step {val[-1]['step']}): "
                         f"{val[-1]['val_loss']:.4f} nats/token")
    for report_path in sorted(run_dir.glob("*.json")):
        report = _json(report_path)
        for r in (report or {}).get("results", []) if isinstance((report or {}).get("results"), list) else []:
            if isinstance(r, dict) and "perplexity" in r:
                lines.append(f"- `{report_path.name}` ({report.get('split')} of `{report.get('data')}`, "
                             f"{r.get('docs')} documents, {r.get('tokens')} tokens, memory {r.get('memory')}): "
                             f"perplexity {r['perplexity']:.3f}, bits per byte {r['bits_per_byte']:.4f}")
    return lines


def data_lines(cfg) -> list[str]:
    meta = _json(Path(cfg.data.path) / "meta.json") or {}
    lines = [f"- prepared data: `{cfg.data.path}` (train split `{cfg.data.train_split}`)"]
    if meta:
        lines.append(f"- {meta.get('n_docs')} documents, {meta.get('n_tokens')} tokens; sources: "
                     f"{json.dumps(meta.get('sources'))}")
    return lines


def model_card(cfg, ckpt: Path, tok) -> str:
    m, t = cfg.model, cfg.train
    state = _json(ckpt / "train_state.json") or {}
    options = cfg.memory.options()
    evals = eval_lines(run_dir_of(ckpt)) or ["- none found in the run directory (run `elastic eval --ckpt RUN "
                                             "--json RUN/eval.json` before exporting to include them)"]
    return "\n".join([
        "---", "library_name: transformers", "tags: [elastic, long-context, memory]", "---", "",
        f"# elastic model: `{cfg.memory.kind}` memory", "",
        f"Exported by `elastic export` from checkpoint `{ckpt}`. The modeling code imports the `elastic_cli` "
        "package (install it first); the model reads any input segment by segment with its memory carried "
        "across segments, in `forward` and in `generate()`.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)",
        "tok = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)",
        "ids = tok('def main(', return_tensors='pt').input_ids   # BOS first, as elastic does",
        "print(tok.decode(model.generate(ids, max_new_tokens=64)[0], skip_special_tokens=True))",
        "```", "",
        "## Memory", "",
        f"- kind: `{cfg.memory.kind}` on layers {memory_layers(cfg)}",
        f"- options: {json.dumps(options, sort_keys=True) if options else 'none'}", "",
        "## Model", "",
        f"- {m.n_layer} layers, d_model {m.d_model}, {m.n_head} heads, MLP {m.mlp_hidden}, vocabulary {m.vocab_size}",
        f"- segment length {m.segment_len} tokens; RoPE base {m.rope_base}; tied embeddings: {m.tie_embeddings}",
        f"- tokenizer: SentencePiece `{Path(tok.path).name}` (sha256 {tok.sha256[:12]}), BOS {tok.bos_id}, "
        f"EOS {tok.eos_id}", "",
        "## Training", "",
        *data_lines(cfg),
        f"- step {state.get('step')} of {t.steps}, {state.get('tokens')} target tokens; global batch {t.global_batch} "
        f"windows of {t.segments} segments, lr {t.lr}, seed {t.seed}", "",
        "## Evaluation", "",
        *evals, "",
    ])
