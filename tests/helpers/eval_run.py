"""A tiny run to evaluate, generate from and export (a helper module, not tests): prepared code
modules and a randomly initialised checkpoint of the tiny model, and what tests do with one."""
from pathlib import Path

import torch

from elastic_cli.runs import checkpoint
from elastic_cli.runs import inference

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "tokenizers" / "code-8k.model"
TINY = ["model.vocab_size=8000", "model.d_model=32", "model.n_head=2", "model.mlp_hidden=64",
        "model.segment_len=16"]
SMALL_MEMORY = {"elastic": ["memory.order=8", "memory.samples=8"]}  # other kinds: their defaults


def code_text(i: int) -> str:
    """A small Python module; lengths differ so documents span different numbers of segments."""
    body = "".join(f"    total += value_{k} * {k + i}  # step {k}: ünïcode ✓\n" for k in range(3 + 4 * i))
    return f'"""Module {i}."""\n\n\ndef compute_{i}(values):\n    total = 0\n{body}    return total\n'


def make_run(root: Path, kind: str = "elastic") -> Path:
    """Prepared data (8 modules: val = mod0, mod6, mod7) and a randomly initialised checkpoint."""
    from elastic_cli.runs import checkpoint
    from elastic_cli.build import build_model
    from elastic_cli.config import dump_yaml, load_config
    from elastic_cli.data.prepare import PrepareOptions, prepare
    from elastic_cli.model.init import init_weights

    src = root / "src"
    src.mkdir(parents=True)
    for i in range(8):
        (src / f"mod{i}.py").write_text(code_text(i), encoding="utf-8")
    prepare([str(src)], str(TOKENIZER), str(root / "data"), PrepareOptions(val_frac=0.5, test_frac=0.2, workers=1))
    cfg = load_config(REPO / "recipes" / "tiny.yaml", [f"data.path={root / 'data'}", f"data.tokenizer={TOKENIZER}",
                                                       f"run.dir={root / 'run'}", f"memory.kind={kind}", *TINY,
                                                       *SMALL_MEMORY.get(kind, [])])
    model = build_model(cfg)
    init_weights(model, seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint.save(root / "run", model, optimizer, {"step": 1}, dump_yaml(cfg), keep_last=1)
    return root / "run"


def sharpen(run) -> None:
    """Re-draw the weights with a larger spread (seeded), so that greedy decoding depends on the
    whole context instead of repeating one token, and save the checkpoint again."""
    cfg, model, _ = inference.load_checkpoint(run)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.35)
    from elastic_cli.config import dump_yaml

    checkpoint.save(run, model, torch.optim.AdamW(model.parameters()), {"step": 1}, dump_yaml(cfg), keep_last=1)


def segment_logits(model, ids):
    """elastic's teacher-forced segment loop (as `elastic eval`): (B, n, V)."""
    states, out = model.empty_states(ids.shape[0], "cpu"), []
    for s in range(0, ids.shape[1], model.segment_len):
        logits, states = model(ids[:, s : s + model.segment_len], states)
        out.append(logits)
    return torch.cat(out, dim=1)
