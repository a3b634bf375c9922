"""Atomic, resumable training checkpoints: safetensors + JSON only, independent of the process count.

Layout of ``<out>/checkpoints/step_00000100/``::

    trainer.json                 step, data position, stage, config, optimiser param groups
    generator.safetensors        full (unsharded) state dict of each trained module
    ema.safetensors / critic.safetensors
    generator_optim.safetensors  optimiser state, keys "<param name>/<state name>"
    rng/rank_00000.json          python / numpy / torch / cuda RNG states of each process
    model/                       the exported model (videomla format: ``videomla generate`` reads it)

Everything is written into ``.tmp-step_00000100`` first; only when every file is complete and
fsynced does the main process rename it into place (``os.replace``) and prune old checkpoints,
so a crash at any point leaves the previous checkpoint intact (a stale ``.tmp-*`` is removed
by the next save). Sharded (FSDP2) states are gathered to full tensors on the main process
for writing and scattered back on load, so a run may resume on a different number of GPUs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .distributed import DistInfo, barrier, reshard
from .rng import capture_rng_states, restore_rng_states

STEP_DIR = re.compile(r"^step_(\d{8})$")
TRAINER_FILE = "trainer.json"
FORMAT = "videomla-train"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (a ``step_*`` folder is complete by construction)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def _options(info: DistInfo, loading: bool) -> StateDictOptions:
    return StateDictOptions(
        full_state_dict=True, cpu_offload=True, broadcast_from_rank0=loading and info.sharded
    )  # fmt: skip


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- optimiser state <-> flat tensors + JSON ---------------------------------------------------
def flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """A full optimiser state dict (keyed by parameter names) -> tensors and JSON-able param groups."""
    tensors = {}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name}/{key} is not a tensor ({type(value).__name__})")
            tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, entry = key.rpartition("/")
        state.setdefault(name, {})[entry] = value
    restored = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": restored}


# -- save ------------------------------------------------------------------------------------------
def save_checkpoint(
    root: Path,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]],
    trainer_state: dict[str, Any],
    info: DistInfo,
    keep_last: int,
    export: Callable[[Mapping[str, torch.Tensor], Path], None] | None = None,
    export_module: str = "generator",
) -> Path:
    """Write checkpoint ``step`` atomically (a collective: every process calls it)."""
    from safetensors.torch import save_file

    tmp = root / f".tmp-{step_dir_name(step)}"
    final = root / step_dir_name(step)
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    barrier(info)
    options = _options(info, loading=False)
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, module in modules.items():
        reshard(module)
        state = get_model_state_dict(module, options=options)  # collective under FSDP2
        if info.is_main:
            save_file({k: v.contiguous() for k, v in state.items()}, tmp / f"{name}.safetensors")
            if export is not None and name == export_module:
                export(state, tmp / "model")
        del state
    for name, (module, optimizer) in optimizers.items():
        state = get_optimizer_state_dict(module, optimizer, options=options)
        if info.is_main:
            tensors, groups[name] = flatten_optimizer(state)
            save_file(tensors, tmp / f"{name}.safetensors")
        del state
    (tmp / "rng" / f"rank_{info.rank:05d}.json").write_text(json.dumps(capture_rng_states()))
    barrier(info)
    if info.is_main:
        record = {"format": FORMAT, "step": step, "world_size": info.world, "optimizer_groups": groups, **trainer_state}
        (tmp / TRAINER_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step: swap, never leave a moment without a complete copy
            old = root / f".tmp-old-{final.name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        for stale in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(stale)
    barrier(info)
    return final


# -- load --------------------------------------------------------------------------------------------
def read_trainer_state(step_dir: Path) -> dict[str, Any]:
    file = step_dir / TRAINER_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{step_dir} is not a training checkpoint (no {TRAINER_FILE})")
    record = json.loads(file.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{file} is not a {FORMAT} record")
    return record


def load_checkpoint(
    step_dir: Path,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]],
    info: DistInfo,
) -> dict[str, Any]:
    """Restore modules, optimisers and this process's RNG states in place; returns trainer.json."""
    from safetensors.torch import load_file

    record = read_trainer_state(step_dir)
    options = _options(info, loading=True)
    for name, module in modules.items():
        reshard(module)
        file = step_dir / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{step_dir} has no {file.name}: it was written by another stage")
        state = load_file(file) if info.is_main else {}
        set_model_state_dict(module, state, options=options)
    for name, (module, optimizer) in optimizers.items():
        file = step_dir / f"{name}.safetensors"
        if not file.is_file() or name not in record["optimizer_groups"]:
            raise FileNotFoundError(f"{step_dir} has no state for optimizer {name!r}")
        state = unflatten_optimizer(load_file(file), record["optimizer_groups"][name]) if info.is_main else {}
        set_optimizer_state_dict(module, optimizer, state, options=options)
    rng_file = step_dir / "rng" / f"rank_{info.rank:05d}.json"
    if rng_file.is_file():
        restore_rng_states(json.loads(rng_file.read_text()))
    elif info.is_main:
        print(f"note: {rng_file} missing (resumed on more processes); its RNG states start fresh")
    return record
