"""Randomness keyed by what it is for, so runs reproduce across resumes and process counts.

Every draw of a training step (timesteps, noise, text dropout, rollout exit steps) comes from a
fresh generator seeded by ``(seed, step, purpose, global sample index)``: a resumed run draws
exactly what the uninterrupted run drew, and 2 processes draw for their samples exactly what one
process draws for the same samples.

Where the numbers are made: on the CPU for a CPU run, and for the small draws (timesteps, text
dropout, grid indices) of every run, which reach a GPU through pinned memory without a host
sync. On a CUDA device the large draws (:meth:`StepRNG.randn`: the noise, as large as the
batch) are made on the device by one Philox generator per (seed, step, purpose, sample), so
they cost no host time; they are as reproducible (resume, process count) as the CPU draws, but
they are other numbers than a CPU run draws. The global RNG states (python, numpy, torch, cuda) are still saved and
restored with checkpoints for anything outside this module that might use them.
"""

from __future__ import annotations

import base64
import hashlib
import random
import warnings
from typing import Any

import numpy as np
import torch

from ..schedule import sample_training_timesteps


def derive_seed(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class StepRNG:
    """The draws of one training step for this process's samples (global indices ``samples``)."""

    def __init__(self, seed: int, step: int, samples: list[int], device: torch.device):
        self.seed = seed
        self.step = step
        self.samples = samples
        self.device = device

    def _gen(self, purpose: str, sample: int | None) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, self.step, purpose, sample))

    def _move(self, out: torch.Tensor) -> torch.Tensor:
        """A CPU draw onto the step's device: through pinned memory, no host sync, on CUDA."""
        if self.device.type == "cuda":
            return out.pin_memory().to(self.device, non_blocking=True)
        return out.to(self.device)

    def randn(self, purpose: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[B, *shape] standard normal, one independent stream per sample (made on a CUDA device)."""
        if self.device.type == "cuda":
            draws = []
            for i in self.samples:
                g = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, self.step, purpose, i))
                draws.append(torch.randn(shape, generator=g, device=self.device))
            return torch.stack(draws).to(dtype)
        out = torch.stack([torch.randn(shape, generator=self._gen(purpose, i)) for i in self.samples])
        return out.to(device=self.device, dtype=dtype)

    def rand(self, purpose: str, shape: tuple[int, ...] = ()) -> torch.Tensor:
        """[B, *shape] uniform in [0, 1), float64."""
        out = torch.stack(
            [torch.rand(shape, generator=self._gen(purpose, i), dtype=torch.float64) for i in self.samples]
        )
        return self._move(out)

    def timesteps(self, purpose: str, n: int, shift: float) -> torch.Tensor:
        """[B, n] shifted training timesteps in (0, 1000] (one per chunk), float64."""
        out = torch.stack([sample_training_timesteps((n,), shift, self._gen(purpose, i)) for i in self.samples])
        return self._move(out)

    def integers(self, purpose: str, high: int, n: int) -> torch.Tensor:
        """[B, n] integers in [0, high)."""
        out = torch.stack([torch.randint(high, (n,), generator=self._gen(purpose, i)) for i in self.samples])
        return self._move(out)

    def shared_integers(self, purpose: str, high: int, n: int) -> list[int]:
        """Integers identical on every process and sample: choices that decide how many forwards run."""
        return torch.randint(high, (n,), generator=self._gen(purpose, None)).tolist()


# -- global RNG states ---------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_states() -> dict[str, Any]:
    """JSON-serialisable states of python, numpy, torch and (when present) every CUDA device."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng_states(states: dict[str, Any]) -> None:
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(states["torch"]))
    if "cuda" in states and torch.cuda.is_available():
        saved = [_unb64(s) for s in states["cuda"]]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states of {len(saved)} devices, this process sees "
                f"{torch.cuda.device_count()}: CUDA RNG states start fresh",
                stacklevel=2,
            )
