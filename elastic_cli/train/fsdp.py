"""`train.parallel: fsdp`: PyTorch's FSDP2 (`fully_shard`) and sharded checkpoints through
`torch.distributed.checkpoint` (DCP). With distributed.py, the only module that imports torch.distributed.

What is sharded: every parameter of the transformer (each block of `model.blocks` is one group,
the root holds the embeddings, the final norm and the output projection), its gradient and its
AdamW moments, over all processes (one 1-D mesh). What is not: the parameters of the memories
(armt's projections, rmt's initial memory, melodi's mixing weights, ...), which a memory may use
outside its block's forward (`empty`, the writes after the last layer); they are replicated like
DDP's, their gradients averaged over ranks once per step (`finish_gradients`). Memory *states*
never are: they stay per sequence on the process that reads the sequence.

Gradients are reduce-scattered after every backward (each BPTT chunk of each micro-batch), so a
process holds only its shard of the gradient during the whole step; DDP's one all-reduce per step
(`distributed.no_sync`) would need a full fp32 gradient on every process, the memory FSDP saves.
FSDP averages gradients over ranks as DDP does, so the token-weighted loss scale of
`step.train_step` is the same in both modes.

One process (`train.parallel=fsdp` without torchrun) has nothing to shard: the model runs as it is,
and its checkpoints are written in the same layout (DCP + model.safetensors).
"""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException  # a failed DCP read or write, raised on every rank
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from elastic_cli.errors import DataError, UsageError
from elastic_cli.train import distributed

try:  # torch >= 2.6: public; fully_shard's ignored_params needs 2.7 (checked by `check_available`)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - older torch: refused at plan time
    init_device_mesh = FSDPModule = MixedPrecisionPolicy = fully_shard = DTensor = None

SHARDS = "dcp"  # the folder of a checkpoint that holds the DCP shards of the model and the optimizer


def check_available() -> None:
    """UsageError (exit 2) when this torch has no FSDP2 with ignored parameters (torch >= 2.7)."""
    if fully_shard is None or "ignored_params" not in inspect.signature(fully_shard).parameters:
        raise UsageError(f"train.parallel=fsdp needs PyTorch's FSDP2 (torch >= 2.7); this is torch {torch.__version__}: "
                         f"upgrade torch or use train.parallel=ddp")


def memory_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The memories' parameters, in model order (the same on every rank): replicated, not sharded."""
    return [p for block in model.blocks if block.memory is not None for p in block.memory.parameters()]


def policy(bf16: bool):
    """The mixed precision of the sharded groups: with bf16 (train.dtype resolves to bf16), parameters
    are all-gathered and computed in bf16 and gradients reduced in fp32; the sharded master copy and
    AdamW stay fp32. Forward inputs are not cast: the memory states passed through each block stay
    fp32 (precision.py). fp32: no policy."""
    if not bf16:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def is_sharded(model: nn.Module) -> bool:
    return FSDPModule is not None and isinstance(model, FSDPModule)


def shard(model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
    """fully_shard each block, then the root, over all processes (in place: the returned module is
    `model`). The model is built and initialised on the host; each group is moved to `device` and
    sharded in turn, so a GPU never holds more than one block unsharded. Memory parameters are
    ignored by FSDP (replicated: `finish_gradients` averages their gradients)."""
    check_available()
    mesh = init_device_mesh(device.type, (distributed.world(),))
    mine = memory_parameters(model)
    ignored = set(mine)
    for block in model.blocks:
        if block.memory is not None:
            block.memory.to(device)  # FSDP does not move ignored parameters
    mp = policy(bf16)
    # Blocks return views (the memory's SegmentView of q/k/v); nothing writes into them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, ignored_params=ignored)
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=ignored)
    return model


def finish_gradients(model: nn.Module) -> None:
    """After the step's last backward: average the replicated (memory) parameters' gradients over
    ranks, as DDP would; FSDP reduced the sharded ones already. One all-reduce of one flat buffer; a
    parameter without a gradient on every rank keeps none (AdamW then skips it, as under DDP)."""
    params = memory_parameters(model)
    if not params or distributed.world() == 1 or not is_sharded(model):
        return
    device = params[0].device
    have = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                                 for p in params]), have])
    dist.all_reduce(flat)
    grads, have = flat[:-len(params)] / distributed.world(), flat[-len(params):]
    offset = 0
    for p, any_rank in zip(params, have.tolist()):
        g = grads[offset:offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        if any_rank:
            p.grad = g.clone()


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over sharded (DTensor) and replicated gradients: the global
    L2 norm (the shards' squares summed over ranks, the replicated gradients counted once), and every
    gradient scaled by min(1, max_norm / (norm + 1e-6)). Returns the norm (a scalar on this device)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    sharded = [g for g, whole in zip(local, grads) if isinstance(whole, DTensor)]
    plain = [g for g, whole in zip(local, grads) if not isinstance(whole, DTensor)]
    device = local[0].device if local else torch.device("cpu")
    square = lambda ts: torch.stack([torch.linalg.vector_norm(t.float()) for t in ts]).square().sum() \
        if ts else torch.zeros((), device=device)  # noqa: E731
    total = square(sharded)
    if distributed.world() > 1:
        dist.all_reduce(total)
    norm = (total + square(plain)).sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in local:
        g.mul_(coef.to(g.dtype))
    return norm


# ---------------------------------------------------------------------------------- checkpoints

def save(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank: the model's and the optimizer's state (this rank's shards; a plain model: all of
    it) into `folder` through DCP, keyed by parameter name, so any number of processes, sharded or
    not, can read it back (`load`)."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    with _alone():
        dcp.save(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())


def load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Every rank: read a DCP checkpoint written by `save` (by any number of processes) into this
    model (sharded or plain, on any device) and optimizer: DCP reads the pieces of each tensor this
    rank holds."""
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)  # a fresh optimizer gets its state allocated
    try:
        with _alone():
            dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    except (CheckpointException, RuntimeError, OSError) as e:
        e = cause(e)
        raise DataError(f"checkpoint {Path(folder).parent} cannot be loaded from {folder}: "
                        f"{' '.join(str(e).split())[:300]}") from None
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])


def cause(e: BaseException) -> BaseException:
    """The error behind a CheckpointException (the lowest rank's), else `e`."""
    if isinstance(e, CheckpointException) and getattr(e, "failures", None):
        failure = e.failures[min(e.failures)]
        return failure[0] if isinstance(failure, tuple) else failure
    return e


@contextmanager
def _alone():
    """DCP in a process without a process group (one process) warns, every time, that it assumes so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank (collective): the whole state dict, gathered on rank 0's host (name -> CPU tensor);
    other ranks get {}. A plain model: its state dict on the host."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict, names: list[str]) -> None:
    """Load an `optimizer.pt` (a plain `optimizer.state_dict()`, parameters numbered in the order of
    its param groups, `names` the parameters' names in that order) into an optimizer over a sharded
    model: each rank keeps its shard of every moment."""
    state = {names[i]: value for i, value in saved["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
