"""Training on the procedural world: batched (device) rendering, the LR schedule, the held-out bank.

CPU only, tiny sizes: 16x16 frames with small objects, a one-layer model, a few steps.
The device renderer runs on the CPU here, where it must give exactly the CPU renderer's clips.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from videomla.checkpoint import save_model
from videomla.config import ModelConfig
from videomla.model import CausalWanModel
from videomla.training.config import OptimSection, config_from_dict
from videomla.training.data import WorldSource, collate
from videomla.training.losses import teacher_forcing_errors
from videomla.training.metrics import read_metrics
from videomla.training.rng import StepRNG
from videomla.training.trainer import Trainer, train

WORLD = {"num_clips": 64, "seed": 3, "size": 16, "radius": [2.0, 3.5], "spatial_stride": 4}
STREAM = {"frames_per_chunk": 2, "sink_frames": 1, "window_frames": 2}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer model that reads the world's 48-channel pixel latents and 64-wide hash text."""
    cfg = ModelConfig(dim=32, num_heads=2, num_layers=1, ffn_dim=64, in_channels=48, out_channels=48,
                      text_dim=64, freq_dim=32)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("world") / "model"
    save_model(CausalWanModel(cfg), path)
    return path


def world_config(model: Path, **extra) -> dict:
    cfg = {
        "stage": "teacher_forcing",
        "steps": 2,
        "precision": "fp32",
        "device": "cpu",
        "model": {"checkpoint": str(model)},
        "stream": dict(STREAM),
        "data": {"kind": "world", "batch_size": 2, "num_frames": 4, "text_dropout": 0.5, "world": dict(WORLD)},
        "optim": {"lr": 1e-3},
        "heldout": {"every": 0},
        "checkpoint": {"every": 100, "keep_last": 1},
        "log": {"tensorboard": False},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


# -- device rendering ---------------------------------------------------------------------------------
def test_device_batches_are_the_cpu_batches(world_model: Path, seed: int) -> None:
    cfg = config_from_dict(world_config(world_model, data={"world": {**WORLD, "seed": seed}}))
    source = WorldSource(cfg.data.world, ModelConfig(in_channels=48, out_channels=48, text_dim=64), 4, 0)
    indices = [5, 0, 63, 17, 17]
    reference = collate([source[i] for i in indices], 4, 16)
    batch = source.device_batch(indices, torch.device("cpu"), 4, 16)
    assert torch.equal(batch.latents, reference.latents)
    assert torch.equal(batch.context, reference.context) and batch.captions == reference.captions


def test_device_rendering_trains_exactly_like_cpu_rendering(world_model: Path, tmp_path: Path) -> None:
    runs = {
        render: train(config_from_dict(world_config(world_model, data={"render": render})), tmp_path / render)
        for render in ("cpu", "device")
    }
    assert runs["cpu"] == runs["device"] and len(runs["cpu"]) == 2


def test_device_rendering_needs_world_clips(world_model: Path, tmp_path: Path) -> None:
    cfg = world_config(world_model, data={"kind": "latents", "path": str(tmp_path), "render": "device"})
    with pytest.raises((ValueError, FileNotFoundError)):
        Trainer(config_from_dict(cfg), tmp_path / "run")


# -- learning-rate schedule ---------------------------------------------------------------------------
def test_lr_schedule_warmup_cosine_linear_and_horizon() -> None:
    o = OptimSection(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert [o.lr_factor(s, 110) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]  # linear warmup
    assert o.lr_factor(60, 110) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert o.lr_factor(110, 110) == pytest.approx(0.1) and o.lr_factor(500, 110) == pytest.approx(0.1)
    late = OptimSection(lr=1.0, schedule="linear", decay_steps=20)
    assert late.lr_factor(80, 100) == 1.0 and late.lr_factor(90, 100) == pytest.approx(0.5)
    assert late.lr_factor(100, 100) == 0.0
    split = OptimSection(lr=1.0, schedule="linear", total_steps=200)  # one schedule over two calls
    assert split.lr_factor(100, 100) == pytest.approx(0.5)
    assert OptimSection(lr=1.0).lr_factor(7, 10) == 1.0
    with pytest.raises(ValueError, match="min_lr_ratio"):
        OptimSection(min_lr_ratio=2.0)


def test_optimiser_follows_the_schedule_and_metrics_log_it(world_model: Path, tmp_path: Path) -> None:
    optim = {"lr": 2e-3, "schedule": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.25}
    cfg = config_from_dict(world_config(world_model, steps=6, optim=optim, log={"every": 1, "tensorboard": False}))
    trainer = Trainer(cfg, tmp_path / "run")
    seen = []
    for _ in range(6):
        trainer.train_step()
        seen.append(trainer.stage.optimizer.param_groups[0]["lr"])
    trainer.flush()
    trainer.close()
    expected = [2e-3 * cfg.optim.lr_factor(s, 6) for s in range(1, 7)]
    assert seen == pytest.approx(expected) and seen[-1] == pytest.approx(5e-4) and seen[1] == max(seen)
    assert [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.csv")] == pytest.approx(expected)


# -- the held-out bank -------------------------------------------------------------------------------
def test_heldout_loss_is_logged_on_its_steps_from_a_fixed_unseen_bank(world_model: Path, tmp_path: Path) -> None:
    held = {"every": 2, "clips": 4, "batch_size": 4}
    cfg = world_config(world_model, steps=5, heldout=held, log={"every": 1, "tensorboard": False})
    history = train(config_from_dict(cfg), tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows if "heldout_loss" in r] == [2, 4, 5]  # every 2 steps and the last
    assert all(0 < r["heldout_loss"] < 10 for r in rows if "heldout_loss" in r)
    assert [r["step"] for r in rows if "heldout_first_chunk_loss" in r] == [2, 4, 5]
    assert [h["step"] for h in history if "heldout_loss" in h] == [2, 4, 5]
    assert [h["heldout_loss"] for h in history if "heldout_loss" in h] == pytest.approx(
        [r["heldout_loss"] for r in rows if "heldout_loss" in r], rel=1e-8
    )

    # the bank: clips past the training range of the stream, the same for any bank batch size
    one = Trainer(config_from_dict({**cfg, "heldout": {**held, "batch_size": 1}}), tmp_path / "a")
    four = Trainer(config_from_dict(cfg), tmp_path / "b")
    assert [p for p, _ in one.bank] == [[0], [1], [2], [3]] and [p for p, _ in four.bank] == [[0, 1, 2, 3]]
    assert torch.equal(torch.cat([b.latents for _, b in one.bank]), four.bank[0][1].latents)
    cpu = torch.device("cpu")
    unseen = four.source.device_batch([64, 65, 66, 67], cpu, 4, 16)  # num_clips = 64: training draws 0..63
    assert torch.equal(four.bank[0][1].latents, unseen.latents)
    first = four.source.device_batch([0, 1, 2, 3], cpu, 4, 16)
    assert not torch.equal(four.bank[0][1].latents, first.latents)
    values = [t.heldout()["heldout_loss"].item() for t in (one, four)]
    assert values[0] == pytest.approx(values[1], rel=1e-5)  # same clips, same draws, other batching
    firsts = [t.heldout()["heldout_first_chunk_loss"].item() for t in (one, four)]
    assert firsts[0] == pytest.approx(firsts[1], rel=1e-5) and firsts[0] != pytest.approx(values[0], rel=1e-3)
    ((positions, batch),) = four.bank
    rng = StepRNG(four.cfg.heldout.seed, 0, positions, cpu)
    model = four.stage.modules[four.stage.export_name]
    errors = teacher_forcing_errors(model, batch.latents, batch.context, four.cfg.stream, rng, 5.0)
    assert firsts[1] == pytest.approx(errors[:, :, : four.cfg.stream.frames_per_chunk].mean().item(), rel=1e-5)
    four.step = 7  # later in the run, the same weights: the same draws, the same number
    assert four.heldout()["heldout_loss"].item() == values[1]
    for t in (one, four):
        t.close()


def test_heldout_shift_fixes_the_banks_timesteps_whatever_the_training_shift(world_model: Path, tmp_path: Path) -> None:
    held = {"every": 1, "clips": 2, "batch_size": 2}
    base = world_config(world_model, steps=1, heldout=held)

    def loss(schedule_shift: float, heldout_shift: float | None) -> float:
        cfg = {**base, "schedule": {"shift": schedule_shift}, "heldout": {**held, "shift": heldout_shift}}
        trainer = Trainer(config_from_dict(cfg), tmp_path / f"{schedule_shift}-{heldout_shift}")
        try:
            return trainer.heldout()["heldout_loss"].item()
        finally:
            trainer.close()

    at_5 = loss(5.0, None)
    assert loss(1.0, 5.0) == at_5  # the bank at shift 5, training at shift 1: the shift-5 number
    assert loss(1.0, None) != at_5  # left unset, the bank follows the training shift
    with pytest.raises(ValueError, match=r"heldout\.shift must be positive"):
        config_from_dict({**base, "heldout": {**held, "shift": 0.0}})


def test_consistency_stage_logs_its_own_heldout_loss(world_model: Path, tmp_path: Path) -> None:
    cfg = world_config(
        world_model, stage="consistency", steps=1, teacher={"checkpoint": str(world_model)},
        consistency={"ode_steps": 8}, heldout={"every": 1, "clips": 2},
    )  # fmt: skip
    train(config_from_dict(cfg), tmp_path / "cd")
    (row,) = read_metrics(tmp_path / "cd" / "metrics.csv")
    assert {"loss", "grad_norm", "lr", "heldout_loss", "heldout_first_chunk_loss", "heldout_cd_loss"} <= set(row)
    assert math.isfinite(row["heldout_cd_loss"]) and row["heldout_cd_loss"] > 0


def test_a_teacher_must_read_the_runs_text_features(world_model: Path, tmp_path: Path) -> None:
    teacher_run = world_config(world_model, steps=1, data={"world": {**WORLD, "text_context": 1}})
    train(config_from_dict(teacher_run), tmp_path / "tf")  # its export records context 1
    cd = world_config(world_model, stage="consistency", steps=1, teacher={"checkpoint": str(tmp_path / "tf")},
                      consistency={"ode_steps": 8})  # fmt: skip
    with pytest.raises(ValueError, match=r"context 1.*context 0"):
        train(config_from_dict(cd), tmp_path / "cd")
    with pytest.warns(UserWarning, match="starting checkpoint"):  # a warm start may change the encoder
        train(config_from_dict(world_config(tmp_path / "tf", steps=1)), tmp_path / "tf0")


def test_latent_folder_runs_take_their_heldout_clips_from_heldout_path(tmp_path: Path) -> None:
    from test_training import run_config, write_clips

    data, held = write_clips(tmp_path / "train"), write_clips(tmp_path / "held", n=3)
    cfg = run_config("teacher_forcing", data, steps=2, heldout={"every": 1, "clips": 3, "path": str(held)})
    train(config_from_dict(cfg), tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows if "heldout_loss" in r] == [1, 2]
    with pytest.raises(ValueError, match=r"fewer than heldout\.clips"):
        train(config_from_dict({**cfg, "heldout": {"every": 1, "clips": 4, "path": str(held)}}), tmp_path / "x")
