"""One process or many: the process group, FSDP2 sharding and the few collectives training needs.

The same code runs as a plain single process (CPU or one GPU) and under ``torchrun``
(``WORLD_SIZE`` > 1 in the environment): NCCL on GPUs, gloo on CPU. With more than one
process every model is sharded with FSDP2 (``fully_shard``), one unit per transformer block,
one for the text embedding (the rollout calls :meth:`CausalWanModel.embed_text` outside
``forward``) and the root; ``forward_chunk`` is registered as a forward method so rollouts
unshard the root parameters too.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..model import CausalWanModel


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The library's one device check (:func:`videomla.pipeline.resolve_device`); ``auto`` = CUDA when
    available, and a bare ``cuda`` under torchrun is this process's GPU (``LOCAL_RANK``)."""
    from ..pipeline import resolve_device as check

    if name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{local_rank}"
    dev = check(None if name == "auto" else name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by torchrun; otherwise a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(0, 1, 0, resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev)


def shutdown(info: DistInfo) -> None:
    if info.sharded and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: CausalWanModel, info: DistInfo) -> CausalWanModel:
    """FSDP2 full sharding (no-op for a single process). Call after activation checkpointing."""
    if not info.sharded:
        return model
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # The text embedding's output is a view of its last Linear's output; FSDP2 warns about in-place
    # ops on such views, which this code never does.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model.text_embedding)
    fully_shard(model)
    register_fsdp_forward_method(model, "forward_chunk")
    _settle_root(model)
    return model


def _settle_root(model: CausalWanModel) -> None:
    """FSDP2 makes whichever sharded module runs first the root of its subtree. Rollouts start with
    ``embed_text`` (the text-embedding unit), so run one 1-token forward through the model first."""
    cfg = model.config
    param = next(model.parameters())
    x = torch.zeros(1, cfg.in_channels, *cfg.patch_size, device=param.device, dtype=param.dtype)
    context = torch.zeros(1, 1, cfg.text_dim, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        model(x, torch.zeros(1, device=param.device), context)
    reshard(model)


def reshard(model: nn.Module) -> None:
    """Free every unsharded parameter (FSDP2 keeps the root's after a forward, for the backward).

    Needed before touching parameters outside a forward (EMA, checkpoints): unsharded they are
    plain tensors, sharded they are DTensors. No-op without FSDP2.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def mean_over_ranks(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    """Average scalar metrics over processes (each rank's value is already a mean over its samples)."""
    if not values:
        return {}
    names = sorted(values)
    stacked = torch.stack([values[n].detach().float().reshape(()) for n in names]).to(info.device)
    if info.sharded:
        dist.all_reduce(stacked)
        stacked /= info.world
    return dict(zip(names, stacked.tolist()))


def mean_tensor_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Elementwise mean of a float tensor over processes (the tensor itself on one process)."""
    if not info.sharded:
        return values
    values = values.to(info.device)
    dist.all_reduce(values)
    return values / info.world


def barrier(info: DistInfo) -> None:
    if info.sharded:
        dist.barrier()
