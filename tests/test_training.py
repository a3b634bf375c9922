"""Training: teacher-forcing layout == cached chunks, each stage learns, resume is exact, saves are atomic."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videomla.checkpoint import load_model, save_model
from videomla.cli import main as cli_main
from videomla.config import StreamConfig, preset
from videomla.engine import EngineOptions
from videomla.pipeline import resolve_checkpoint
from videomla.sampler import LatentGeometry, stream_latents
from videomla.schedule import TEACHER_SAMPLER, SamplingSchedule, warp_steps
from videomla.training.checkpointing import latest_checkpoint, list_checkpoints
from videomla.training.config import config_from_dict, load_config
from videomla.training.data import Batch, DataOrder, LatentFolder, collate, local_slice
from videomla.training.losses import (
    Guidance,
    dmd_direction,
    dmd_generator_loss,
    rollout,
    teacher_forcing_errors,
    teacher_forcing_loss,
)
from videomla.training.metrics import read_metrics
from videomla.training.models import EMA, freeze, trainable_copy
from videomla.training.rng import StepRNG
from videomla.training.stages import ConsistencyStage, DMDStage, TeacherForcingStage
from videomla.training.trainer import train

from conftest import rel_err, tiny_model

STREAM = {"frames_per_chunk": 2, "sink_frames": 1, "window_frames": 2}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP contention stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_clips(folder: Path, n: int = 4, frames: int = 6, channels: int = 4, text_dim: int = 32) -> Path:
    """Random clips with some temporal structure (a static base plus per-frame noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        lat = torch.randn(channels, 1, 4, 4, generator=g) + 0.3 * torch.randn(channels, frames, 4, 4, generator=g)
        ctx = torch.randn(5, text_dim, generator=g)
        save_file({"latents": lat, "context": ctx}, folder / f"clip_{i:03d}.safetensors", metadata={"caption": f"c{i}"})
    return folder


def run_config(stage: str, data: Path, **extra) -> dict:
    cfg = {
        "stage": stage,
        "steps": 4,
        "precision": "fp32",
        "device": "cpu",
        "model": {"preset": "tiny"},
        "stream": dict(STREAM),
        "data": {"path": str(data), "batch_size": 2},
        "optim": {"lr": 1e-3},
        "consistency": {"ode_steps": 8},
        "dmd": {"critic_lr": 1e-3, "critic_updates": 2},
        "checkpoint": {"every": 2, "keep_last": 2},
        "log": {"tensorboard": False},
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A latent folder and a stage-1-like teacher checkpoint, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("training")
    torch.manual_seed(0)
    teacher = root / "teacher"
    save_model(tiny_model(), teacher)
    return {"root": root, "data": write_clips(root / "clips"), "teacher": teacher}


# -- the two-copy teacher-forcing layout --------------------------------------------------------------
@pytest.mark.parametrize("mla", [False, True], ids=["dense", "mla"])
@pytest.mark.parametrize("rope", ["window-relative", "absolute"])
def test_teacher_forcing_forward_equals_cached_chunks(seed: int, mla: bool, rope: str) -> None:
    """Noisy chunk c of [clean ; noisy] == forward_chunk on it after the clean chunks < c were committed."""
    cfg = preset("tiny").with_mla() if mla else preset("tiny")
    model = tiny_model(cfg, torch.float64)
    stream = StreamConfig(frames_per_chunk=2, sink_frames=1, window_frames=3, rope_mode=rope)  # evicts by chunk 3
    b, f, h, w = 2, 10, 4, 6
    x0, xt = torch.randn(2, b, 4, f, h, w, dtype=torch.float64)
    context = torch.randn(b, 5, 32, dtype=torch.float64)
    t = (torch.rand(b, f // 2, dtype=torch.float64) * 1000).repeat_interleave(2, dim=1)
    zeros = torch.zeros(b, f, dtype=torch.float64)
    both = model(torch.cat([x0, xt], 2), torch.cat([zeros, t], 1), context, stream, teacher_forcing=True)

    cache, text, noisy = model.new_cache(stream, b, h, w), model.embed_text(context), []
    for s in range(0, f, 2):
        noisy.append(model.forward_chunk(xt[:, :, s : s + 2], t[:, s : s + 2], text, cache))
        model.forward_chunk(x0[:, :, s : s + 2], zeros[:, s : s + 2], text, cache, write=True)
    assert rel_err(both[:, :, f:], torch.cat(noisy, 2)) < 1e-12
    assert rel_err(both[:, :, :f], model(x0, zeros, context, stream)) < 1e-12  # the clean copy is the cache pass


def test_teacher_forcing_needs_a_stream_and_two_copies() -> None:
    model = tiny_model()
    x, context = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match="teacher forcing needs a StreamConfig"):
        model(x, torch.zeros(1), context, None, teacher_forcing=True)
    with pytest.raises(ValueError, match="even number of frames"):
        model(x[:, :, :3], torch.zeros(1), context, StreamConfig(frames_per_chunk=1), teacher_forcing=True)


# -- config ------------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_bad_types(tmp_path: Path) -> None:
    base = {"stage": "teacher_forcing", "steps": 3, "data": {"path": "x"}, "model": {"preset": "tiny"}}
    with pytest.raises(ValueError, match=r"unknown config key\(s\) optim.lrr"):
        config_from_dict({**base, "optim": {"lrr": 1.0}})
    with pytest.raises(ValueError, match="unknown config key"):
        config_from_dict({**base, "stram": {}})
    with pytest.raises(ValueError, match="steps must be an integer"):
        config_from_dict({**base, "steps": "many"})
    with pytest.raises(ValueError, match="stage must be one of"):
        config_from_dict({**base, "stage": "pretrain"})
    with pytest.raises(ValueError, match=r"set teacher\.checkpoint"):
        config_from_dict({**base, "stage": "dmd"})
    with pytest.raises(ValueError, match="frames_per_chunk must be >= 1"):
        config_from_dict({**base, "stream": {"frames_per_chunk": 0}})
    with pytest.raises(ValueError, match="config key steps is required"):
        config_from_dict({"stage": "dmd"})
    with pytest.raises(ValueError, match=r"set model\.preset \(random init\) or model\.checkpoint"):
        config_from_dict({**base, "model": {}})
    file = tmp_path / "c.yaml"
    file.write_text(
        "stage: teacher_forcing\nsteps: 3\nmodel: {preset: tiny}\ndata: {path: x}\noptim: {lr: 5e-6}\n"
    )  # YAML: '5e-6' is a str
    cfg = load_config(file, ["optim.betas=[0.5, 0.9]", "stream.window_frames=4", "dmd.critic_lr=1e-7"])
    assert cfg.optim.lr == 5e-6 and cfg.optim.betas == (0.5, 0.9) and cfg.dmd.critic_lr == 1e-7
    assert cfg.stream == StreamConfig(window_frames=4)
    assert cfg.lr == 5e-6 and config_from_dict({**base, "stage": "teacher_forcing"}).lr == 5e-6
    with pytest.raises(ValueError, match="--set takes key=value"):
        load_config(file, ["optim.lr"])


# -- data ----------------------------------------------------------------------------------------------
def test_latent_folder_checks_and_batches(tmp_path: Path) -> None:
    folder = write_clips(tmp_path / "ok", n=3)
    source = LatentFolder(folder)
    cfg, stream = preset("tiny"), StreamConfig(frames_per_chunk=2)
    source.check(cfg, stream, 4, None)
    batch = collate([source[0], source[2]], 4, 8)
    assert batch.latents.shape == (2, 4, 4, 4, 4) and batch.context.shape == (2, 8, 32)
    assert batch.context[:, 5:].abs().sum() == 0 and batch.captions == ["c0", "c2"]
    with pytest.raises(ValueError, match="latents have 4 channels; the model takes 16"):
        source.check(preset("wan2.1-t2v-1.3b"), stream, None, None)
    with pytest.raises(ValueError, match=r"fewer than data\.num_frames"):
        source.check(cfg, stream, 8, None)
    with pytest.raises(ValueError, match="whole number of 4-frame chunks"):
        source.check(cfg, StreamConfig(frames_per_chunk=4), None, None)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"latents": torch.zeros(4, 2, 4, 4)}, bad / "a.safetensors")
    with pytest.raises(ValueError, match="must hold 'latents'"):
        LatentFolder(bad)
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        LatentFolder(tmp_path / "ok" / "..")


def test_data_order_is_a_seeded_epoch_shuffle_split_over_ranks() -> None:
    order = DataOrder(size=5, batch=2, seed=3, shuffle=True)
    seen = [order.next_indices() for _ in range(5)]  # 10 samples = 2 epochs
    flat = [i for batch in seen for i in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))
    resumed = DataOrder(size=5, batch=2, seed=3, shuffle=True)
    resumed.load_state_dict({"samples_seen": 4})
    assert resumed.next_indices() == seen[2]
    assert local_slice([7, 8, 9, 10], 1, 2) == ([2, 3], [9, 10])
    with pytest.raises(ValueError, match="not divisible"):
        local_slice([1, 2, 3], 0, 2)


def test_world_source_encodes_clips_for_the_world_preset() -> None:
    from videomla.training.data import WorldSource

    source = WorldSource({"num_clips": 3, "size": 48}, preset("world"), frames=3, seed=0)
    clip = source[1]
    assert clip.latents.shape == (48, 3, 12, 12) and clip.context.shape == (16, 64) and "bouncing" in clip.caption
    from videomla.config import StreamConfig
    from videomla.pipeline import GenerationSpec
    from videomla.schedule import SamplingSchedule

    spec = source.generation_spec(StreamConfig(), SamplingSchedule((1000, 500), 3.0))
    assert spec.to_dict()["video"] == {"height": 48, "width": 48, "fps": 8.0}
    assert GenerationSpec.from_dict(spec.to_dict()) == spec  # what generate reads back, sampler included
    with pytest.raises(ValueError, match=r"unknown data\.world keys"):
        WorldSource({"colour": "red"}, preset("world"), frames=3, seed=0)


# -- rollouts ------------------------------------------------------------------------------------------
class SequentialRNG(StepRNG):
    """Draws in the order stream_latents draws them, and always exits at the last step."""

    def __init__(self, seed: int):
        super().__init__(seed, 0, [0], CPU)
        self.g = torch.Generator().manual_seed(seed)
        self.batch = 1

    def randn(self, purpose, shape, dtype=torch.float32):
        return torch.randn((self.batch, *shape), generator=self.g, dtype=dtype)

    def shared_integers(self, purpose, high, n):
        return [high - 1] * n


def test_rollout_without_early_exit_is_the_inference_sampler(seed: int) -> None:
    model = tiny_model()
    stream = StreamConfig(frames_per_chunk=2, sink_frames=1, window_frames=2)
    text = torch.randn(1, 5, 32)
    ours = rollout(model, text, (1, 4, 8, 4, 6), stream, warp_steps(), SequentialRNG(seed), "r", False, torch.float32)
    g = torch.Generator().manual_seed(seed)
    ref = torch.cat(
        list(
            stream_latents(
                model, model.embed_text(text), LatentGeometry(4, 4, 6), stream, 4, generator=g,
                options=EngineOptions(cpu_fast_matmul=False),  # IEEE float32 matmuls, as training runs
            )
        ),
        2,
    )  # fmt: skip
    assert torch.equal(ours, ref)


def test_rollout_keeps_gradients_only_at_each_chunks_exit_step(seed: int) -> None:
    model = trainable_copy(tiny_model())
    stream = StreamConfig(frames_per_chunk=2, sink_frames=1, window_frames=2)
    rng = StepRNG(seed, 1, [0, 1], CPU)
    calls: list[tuple[bool, bool]] = []  # (grad enabled, writes the cache)
    original = model.forward_chunk

    def spy(x, t, text, cache, write=False):
        calls.append((torch.is_grad_enabled(), write))
        return original(x, t, text, cache, write)

    model.forward_chunk = spy
    x0 = rollout(model, torch.randn(2, 5, 32), (2, 4, 6, 4, 4), stream, warp_steps(), rng, "r", True, torch.float32)
    exits = rng.shared_integers("r/exit", 4, 3)
    expected = []
    for k in exits:
        expected += [(False, False)] * k + [(True, False), (False, True)]
    assert calls == expected
    x0.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_activation_checkpointing_recomputes_the_same_gradients(seed: int, monkeypatch) -> None:
    import videomla.training.models as models

    calls = []
    real = models.checkpoint
    monkeypatch.setattr(models, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = trainable_copy(tiny_model())
    checkpointed = trainable_copy(plain)
    models.enable_activation_checkpointing(checkpointed)
    batch, stream = fixed_batch(), StreamConfig(**STREAM)
    for model in (plain, checkpointed):
        rng = StepRNG(seed, 1, [0, 1], CPU)
        teacher_forcing_loss(model, batch.latents, batch.context, stream, rng, 5.0).backward()
    assert len(calls) == 2  # one per block, forward only (the recomputation runs inside autograd)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_first_chunk_weight_reweighs_the_per_chunk_mse(seed: int) -> None:
    model, stream = tiny_model(), StreamConfig(**STREAM)
    batch = Batch(torch.randn(2, 4, 6, 4, 4), torch.randn(2, 5, 32), ["a", "b"])  # 3 chunks of 2 frames

    def loss(weight: float | None) -> torch.Tensor:
        rng = StepRNG(seed, 1, [0, 1], CPU)  # the same timesteps and noise for every weight
        with torch.no_grad():
            if weight is None:
                return teacher_forcing_errors(model, batch.latents, batch.context, stream, rng, 5.0)
            return teacher_forcing_loss(model, batch.latents, batch.context, stream, rng, 5.0, weight)

    errors = loss(None)
    first, later = errors[:, :, :2].mean(), errors[:, :, 2:].mean()
    assert loss(1.0) == errors.mean()
    assert loss(1.0).item() == pytest.approx(((first + 2 * later) / 3).item(), rel=1e-5)
    assert loss(4.0).item() == pytest.approx(((4 * first + 2 * later) / 6).item(), rel=1e-5)
    assert loss(0.25).item() == pytest.approx(((0.25 * first + 2 * later) / 2.25).item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"loss\.first_chunk_weight must be positive"):
        stage_config("teacher_forcing", loss={"first_chunk_weight": 0.0})


# -- each stage learns ---------------------------------------------------------------------------------
def fixed_batch() -> Batch:
    return Batch(torch.randn(2, 4, 6, 4, 4), torch.randn(2, 5, 32), ["a", "b"])


def stage_config(stage: str, **extra):
    return config_from_dict(run_config(stage, Path("unused"), **extra))


def test_teacher_forcing_overfits_a_fixed_batch(seed: int) -> None:
    cfg = stage_config("teacher_forcing", data__text_dropout=0.5)
    stage = TeacherForcingStage(cfg, trainable_copy(tiny_model()), None, contextlib.nullcontext, torch.zeros(5, 32))
    batch, rng = fixed_batch(), StepRNG(seed, 1, [0, 1], CPU)
    losses = [stage.step(batch, rng, i + 1)["loss"].item() for i in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_consistency_distillation_overfits_a_fixed_batch(seed: int) -> None:
    cfg = stage_config("consistency", teacher={"checkpoint": "t"})
    teacher = freeze(tiny_model())
    stage = ConsistencyStage(cfg, trainable_copy(teacher), None, contextlib.nullcontext, teacher, torch.zeros(5, 32))
    batch, rng = fixed_batch(), StepRNG(seed, 1, [0, 1], CPU)
    losses = [stage.step(batch, rng, i + 1)["loss"].item() for i in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_dmd_critic_fits_the_generators_samples(seed: int) -> None:
    cfg = stage_config("dmd", teacher={"checkpoint": "t"}, dmd__critic_updates=5)
    teacher = freeze(tiny_model())
    generator = trainable_copy(teacher)
    stage = DMDStage(
        cfg, generator, EMA(generator, 0.99, 1), contextlib.nullcontext, teacher, trainable_copy(teacher),
        torch.zeros(5, 32), torch.float32,
    )  # fmt: skip
    batch, rng = fixed_batch(), StepRNG(seed, 1, [0, 1], CPU)
    out = [stage.step(batch, rng, i + 1) for i in range(20)]
    assert [i + 1 for i, o in enumerate(out) if "generator_loss" in o] == [1, 6, 11, 16]
    critic = [o["critic_loss"].item() for o in out]
    assert sum(critic[-3:]) < 0.7 * sum(critic[:3]), critic
    ema, gen = dict(stage.ema.model.named_parameters()), dict(generator.named_parameters())
    assert all(not torch.equal(ema[k], gen[k]) for k in ("head.head.weight", "blocks.0.ffn.0.weight"))


def test_dmd_generator_step_moves_samples_against_fake_minus_real(seed: int) -> None:
    """One SGD step on the DMD loss moves the rolled-out clip along -(x0_fake - x0_real)."""
    stream = StreamConfig(frames_per_chunk=2, sink_frames=1, window_frames=2)
    teacher, critic = freeze(tiny_model()), freeze(tiny_model())  # two different scores: g != 0
    generator = trainable_copy(teacher)
    context, guidance = torch.randn(2, 5, 32), Guidance(3.0, torch.zeros(2, 5, 32))
    rng, steps, shape = StepRNG(seed, 1, [0, 1], CPU), warp_steps(), (2, 4, 6, 4, 4)
    with torch.no_grad():
        before = rollout(generator, context, shape, stream, steps, rng, "gen/rollout", False, torch.float32)
    g = dmd_direction(critic, teacher, before, context, stream, rng, guidance, 5.0, (20.0, 980.0))
    loss = dmd_generator_loss(generator, critic, teacher, context, shape, stream, rng, guidance, steps, 5.0,
                              (20.0, 980.0), torch.float32)  # fmt: skip
    assert abs(loss.item() - 0.5 * g.square().mean().item()) < 1e-6 * loss.item()
    loss.backward()
    torch.optim.SGD(generator.parameters(), lr=1e-2).step()
    with torch.no_grad():
        after = rollout(generator, context, shape, stream, steps, rng, "gen/rollout", False, torch.float32)
    moved = after - before
    cosine = -(moved * g).sum() / (moved.norm() * g.norm())
    assert cosine > 0.2, cosine  # a random direction: |cos| ~ 0.05 here


def test_exports_record_the_sampler_their_stage_wants() -> None:
    cfg = stage_config("teacher_forcing")
    assert cfg.schedule.sampler("teacher_forcing") == TEACHER_SAMPLER  # a flow-matching model: the ODE
    assert cfg.schedule.sampler("dmd") == SamplingSchedule((1000, 750, 500, 250), 5.0, "renoise")
    explicit = config_from_dict({**cfg.to_dict(), "schedule": {"steps": [1000, 500], "solver": "euler"}})
    assert explicit.schedule.sampler("teacher_forcing") == SamplingSchedule((1000, 500), 5.0, "euler")
    with pytest.raises(ValueError, match=r"schedule\.solver"):
        config_from_dict({**cfg.to_dict(), "schedule": {"solver": "heun"}})
    own_steps = config_from_dict({**cfg.to_dict(), "schedule": {"steps": [1000, 600, 200]}})
    assert own_steps.schedule.sampler("teacher_forcing") == SamplingSchedule((1000, 600, 200), 5.0, "euler")
    with pytest.raises(ValueError, match="re-noising"):  # a distilled stage trains for renoise only
        stage_config("dmd", teacher={"checkpoint": "t"}, schedule={"solver": "euler"})


# -- runs: resume, atomic saves, export, CLI -----------------------------------------------------------
@pytest.mark.parametrize("stage", ["teacher_forcing", "consistency", "dmd"])
def test_resumed_run_reproduces_the_uninterrupted_run(workspace: dict, tmp_path: Path, stage: str) -> None:
    extra = {} if stage == "teacher_forcing" else {"teacher": {"checkpoint": str(workspace["teacher"])}}
    cfg = run_config(stage, workspace["data"], steps=4, **extra)
    full = train(config_from_dict(cfg), tmp_path / "full")
    train(config_from_dict({**cfg, "steps": 2}), tmp_path / "split")
    rest = train(config_from_dict(cfg), tmp_path / "split", resume=True)
    assert [h["step"] for h in rest] == [3, 4]
    assert rest == full[2:]  # bitwise: every metric of steps 3 and 4
    assert read_metrics(tmp_path / "split" / "metrics.csv") == read_metrics(tmp_path / "full" / "metrics.csv")
    names = sorted(p.name for p in (tmp_path / "split" / "checkpoints" / "step_00000004").iterdir())
    expected = {"teacher_forcing": [], "consistency": [], "dmd": ["critic.safetensors", "critic_optim.safetensors",
                                                                 "ema.safetensors"]}[stage]  # fmt: skip
    assert names == sorted(["generator.safetensors", "generator_optim.safetensors", "model", "rng", "trainer.json",
                            *expected])  # fmt: skip


KILLER = """
import os, signal, sys
import safetensors.torch as st
from videomla.training.config import config_from_dict
from videomla.training.trainer import train
import json
real, calls = st.save_file, []
def save_file(tensors, path, metadata=None):
    calls.append(path)
    if "step_00000004" in str(path) and len(calls) > 2:  # the 2nd file of the 2nd checkpoint: die halfway
        with open(path, "wb") as f:
            f.write(b"half a safetensors file")
        os.kill(os.getpid(), signal.SIGKILL)
    real(tensors, path, metadata=metadata)
st.save_file = save_file
train(config_from_dict(json.loads(sys.argv[1])), sys.argv[2])
"""


def test_killed_while_saving_keeps_the_previous_checkpoint(workspace: dict, tmp_path: Path) -> None:
    cfg = run_config("teacher_forcing", workspace["data"], steps=4)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), json.dumps(cfg), str(out)], env=env)
    assert done.returncode == -9  # SIGKILL, mid-write
    root = out / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002"]
    assert (root / ".tmp-step_00000004").is_dir()  # the torn write, never renamed into place
    assert load_model(root / "step_00000002" / "model") is not None
    resumed = train(config_from_dict(cfg), out, resume=True)
    reference = train(config_from_dict(cfg), tmp_path / "reference")
    assert resumed == reference[2:]
    assert not (root / ".tmp-step_00000004").exists()
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002", "step_00000004"]


def test_keep_last_and_refusing_to_overwrite_a_run(workspace: dict, tmp_path: Path) -> None:
    cfg = run_config("teacher_forcing", workspace["data"], steps=5, checkpoint={"every": 1, "keep_last": 2})
    train(config_from_dict(cfg), tmp_path / "run")
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000004", "step_00000005"]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(config_from_dict(cfg), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        train(config_from_dict(cfg), tmp_path / "empty", resume=True)
    assert train(config_from_dict(cfg), tmp_path / "run", resume=True) == []  # already at 5 steps


def test_cli_trains_exports_and_the_export_loads(workspace: dict, tmp_path: Path, capsys) -> None:
    cfg = run_config("teacher_forcing", workspace["data"], precision="bf16", activation_checkpointing=True)
    file = tmp_path / "tf.yaml"
    file.write_text(json.dumps(cfg))  # JSON is YAML
    out = tmp_path / "run"
    assert cli_main(["train", str(file), "--out", str(out), "--set", "steps=2", "--device", "cpu"]) == 0
    assert "step 2:" in capsys.readouterr().out
    rows = read_metrics(out / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    exported = latest_checkpoint(out / "checkpoints") / "model"
    meta = json.loads((exported / "config.json").read_text())
    assert meta["stream"] == {**STREAM, "rope_mode": "window-relative"} and meta["training"]["step"] == 2
    assert meta["schedule"] == TEACHER_SAMPLER.to_dict()  # a stage-1 model is sampled by the flow-matching ODE
    assert resolve_checkpoint(out) == exported  # stage 2/3 configs may name a run folder
    model = load_model(exported)
    trained = load_file(exported.parent / "generator.safetensors")
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert cli_main(["train", str(file), "--out", str(tmp_path / "x"), "--set", "optim.lrr=1"]) == 2
    assert "unknown config key(s) optim.lrr" in capsys.readouterr().err


def test_mla_conversion_of_a_dense_checkpoint_trains_and_exports(workspace: dict, tmp_path: Path) -> None:
    model = {"checkpoint": str(workspace["teacher"]), "mla": True, "mla_layers": [1]}
    cfg = run_config("teacher_forcing", workspace["data"], steps=1, model=model)
    train(config_from_dict(cfg), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "mla_conversion.json").read_text())
    assert report["init"] == "svd" and [layer["layer"] for layer in report["layers"]] == [1]
    exported = load_model(resolve_checkpoint(tmp_path / "run"))
    assert exported.config.mla_layers == (1,) and len(exported.mla_layers()) == 1


def test_a_checkpoint_refined_to_a_finer_grid_trains_and_exports(workspace: dict, tmp_path: Path) -> None:
    model = {"checkpoint": str(workspace["teacher"]), "patch_size": [1, 1, 1]}
    cfg = run_config("teacher_forcing", workspace["data"], steps=1, model=model)
    train(config_from_dict(cfg), tmp_path / "run")
    exported = load_model(resolve_checkpoint(tmp_path / "run"))
    assert exported.config.patch_size == (1, 1, 1)
    with pytest.raises(ValueError, match="refines a checkpoint"):
        fine_preset = {"preset": "tiny", "patch_size": [1, 1, 1]}
        config_from_dict(run_config("teacher_forcing", workspace["data"], steps=1, model=fine_preset))


def test_a_deepened_checkpoint_trains_and_exports(workspace: dict, tmp_path: Path) -> None:
    teacher = load_model(resolve_checkpoint(workspace["teacher"]))
    model = {"checkpoint": str(workspace["teacher"]), "num_layers": 2 * teacher.config.num_layers}
    cfg = run_config("teacher_forcing", workspace["data"], steps=1, model=model)
    train(config_from_dict(cfg), tmp_path / "run")
    exported = load_model(resolve_checkpoint(tmp_path / "run"))
    assert exported.config.num_layers == len(exported.blocks) == 2 * teacher.config.num_layers
    with pytest.raises(ValueError, match="deepens a checkpoint"):
        deep_preset = {"preset": "tiny", "num_layers": 4}
        config_from_dict(run_config("teacher_forcing", workspace["data"], steps=1, model=deep_preset))


def test_bundled_configs_resolve_by_name(capsys) -> None:
    """The configs ship in the package: `videomla train world-1-teacher-forcing` works after pip install."""
    from videomla.cli import main
    from videomla.cli.train import BUNDLED, bundled_config

    assert Path(bundled_config("world-1-teacher-forcing")) == BUNDLED / "world-1-teacher-forcing.yaml"
    assert bundled_config("./my.yaml") == "./my.yaml"  # a path stays a path
    assert main(["train", "--list-configs"]) == 0
    listed = capsys.readouterr().out
    assert all(p.stem in listed for p in BUNDLED.glob("*.yaml")) and "world-teacher" in listed
