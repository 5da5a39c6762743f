"""Save checkpoints of a small model in a loop until killed: test_faults.py forks a process into
`main` (torch already imported, so a trial costs well under a second) and kills it with SIGKILL.
`ready` (a multiprocessing Event) is set after the process's first complete save."""
from pathlib import Path

import torch

from elastic_cli.runs import checkpoint
from elastic_cli.build import build_model
from elastic_cli.config import dump_yaml, load_config
from elastic_cli.model.init import init_weights
from elastic_cli.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["model.d_model=128", "model.n_head=2", "model.mlp_hidden=256", "model.segment_len=8",
             "memory.order=4", "memory.samples=4", "model.tie_embeddings=false"]


def main(run_dir: str, first: int, ready) -> None:
    torch.set_num_threads(1)
    cfg = load_config(ROOT / "recipes" / "tiny.yaml", OVERRIDES)
    model = build_model(cfg)
    init_weights(model, 0)
    opt = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1, torch.device("cpu"))
    logits, _ = model(torch.arange(16).view(2, 8), model.empty_states(2, "cpu"))
    logits.float().logsumexp(-1).mean().backward()
    opt.step()
    step = first
    while True:
        with torch.no_grad():
            model.embed.weight[0, 0] = step  # each checkpoint's weights name its step
        checkpoint.save(Path(run_dir), model, opt, {"step": step}, dump_yaml(cfg), keep_last=2)
        if step == first:
            ready.set()  # one complete checkpoint of this process exists; kills come now
        step += 1

