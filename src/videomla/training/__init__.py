"""Training: the Causal Forcing recipe (teacher forcing -> consistency distillation -> DMD).

``config`` (the YAML schema), ``data`` (latent folders, the procedural world, the data order),
``losses`` (the three objectives and the Self-Forcing rollout), ``stages`` (one update step per
stage), ``models`` (initialisation, activation checkpointing, EMA), ``distributed`` (FSDP2),
``checkpointing`` (atomic, resumable checkpoints), ``rng`` (reproducible draws), ``metrics``
and ``trainer`` (the loop). See docs/train.md.
"""

from .config import TrainConfig, load_config
from .trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "load_config", "train"]
