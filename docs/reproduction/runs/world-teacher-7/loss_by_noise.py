"""Held-out teacher-forcing loss split by noise level, for several teachers on the same clips and noise.

Ad-hoc diagnostic (docs/reproduction.md, teacher 7): does a lower held-out loss come from the
low-noise steps (detail) rather than the high-noise ones that decide the layout?
Run from the repository root (CPU, 8 held-out clips):
    python docs/reproduction/runs/world-teacher-7/loss_by_noise.py CONFIG=MODEL [CONFIG=MODEL ...]
CONFIG gives the bank and the stream; it starts from MODEL, or, where it reshapes its start
(model.patch_size or model.num_layers), from its own checkpoint reshaped, and then takes MODEL's weights.
Every chunk of a clip gets the same timestep; each band uses one fixed noise draw for all models.
A second line per model splits each band into the first chunk (drawn from the text alone: what
sampling starts from) and the later chunks (teacher-forced on the clean chunks before them).
"""

import sys
import tempfile

import torch

from videomla.checkpoint import load_model
from videomla.schedule import add_noise
from videomla.training.config import load_config
from videomla.training.losses import forced_velocity, frame_sigma
from videomla.training.trainer import Trainer

TIMESTEPS = (975, 900, 750, 500, 250, 100, 25)  # training timesteps in (0, 1000]; sigma = t / 1000

for arg in sys.argv[1:]:
    config, model = arg.split("=")
    start = load_config(config).model
    reshaped = start.patch_size is not None or start.num_layers is not None
    sets = [] if reshaped else [f"model.checkpoint={model}"]
    sets += ["device=cpu", "precision=fp32", "heldout.clips=8",
            "heldout.batch_size=8", "data.batch_size=8", "kernels.backend=eager"]  # fmt: skip
    cfg = load_config(config, sets)
    trainer = Trainer(cfg, tempfile.mkdtemp())
    net = trainer.stage.modules[trainer.stage.export_name].eval()
    if reshaped:
        net.load_state_dict(load_model(model).state_dict())
    row, split = [], []
    chunk = cfg.stream.frames_per_chunk
    for t in TIMESTEPS:
        total, count, first, first_count = 0.0, 0, 0.0, 0
        for k, (_, batch) in enumerate(trainer.bank):
            x0 = batch.latents
            gen = torch.Generator().manual_seed(1000 * t + k)
            eps = torch.randn(x0.shape, generator=gen)
            tt = torch.full((x0.shape[0], x0.shape[2]), float(t), dtype=torch.float64)
            with torch.no_grad():
                v = forced_velocity(net, x0, add_noise(x0, eps, frame_sigma(tt, x0)), tt, batch.context, cfg.stream)
            err = (v.float() - (eps - x0).float()) ** 2
            total += err.sum().item()
            count += x0.numel()
            first += err[:, :, :chunk].sum().item()
            first_count += err[:, :, :chunk].numel()
        row.append(total / count)
        split.append((first / first_count, (total - first) / (count - first_count)))
    print(model, " ".join(f"t{t}:{loss:.4f}" for t, loss in zip(TIMESTEPS, row)), flush=True)
    print(
        "  first chunk / later:", " ".join(f"t{t}:{a:.4f}/{b:.4f}" for t, (a, b) in zip(TIMESTEPS, split)), flush=True
    )
