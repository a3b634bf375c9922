"""Sample rollouts during training: written at the right steps, what generate makes of the export,
no effect on training, resumable, refused when misconfigured, logged to TensorBoard and W&B.

CPU only: the one-layer world model of test_training_world (16x16 frames), a few steps.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import videomla
from test_training_world import one_thread, world_config, world_model  # noqa: F401 (fixtures: autouse, `model`)
from videomla.training.config import config_from_dict
from videomla.training.samples import INDEX_FILE
from videomla.training.trainer import Trainer, train
from videomla.video_io import MissingWriterError


@pytest.fixture(scope="module")
def model(world_model: Path) -> Path:  # noqa: F811 (the imported fixture)
    """The one-layer world model (48-channel pixel latents, 64-wide hash text)."""
    return world_model


SAMPLES = {"every": 2, "count": 2, "seeds": [0, 1], "chunks": 2}  # 2 prompts x 2 seeds, 4 frames each


def sample_config(model: Path, **extra) -> dict:
    cfg = world_config(model, **extra)
    cfg["samples"] = {**SAMPLES, **cfg.get("samples", {})}
    return cfg


def sample_steps(run: Path) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in sorted((run / "samples").iterdir())]


def read_video(path: Path) -> np.ndarray:
    """uint8 frames [T, H, W, 3] of an mp4 (PyAV) or a GIF (Pillow)."""
    if path.suffix == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def run_files(run: Path) -> dict[str, bytes]:
    """Every checkpoint and sample file of a run, by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# -- where and what ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_samples_every_n_steps_and_at_the_last(model: Path, tmp_path: Path, fmt: str) -> None:
    cfg = config_from_dict(sample_config(model, steps=5, samples={"format": fmt}))
    train(cfg, tmp_path / "run")
    assert sample_steps(tmp_path / "run") == [2, 4, 5]
    folder = tmp_path / "run" / "samples" / "step_00000005"
    index = json.loads((folder / INDEX_FILE).read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted([INDEX_FILE, *(f"{i}.{fmt}" for i in range(4))])
    trainer = Trainer(cfg, tmp_path / "other")  # the held-out captions: clips past the 64 training clips
    captions = trainer.sampler.jobs[::2]
    trainer.close()
    assert [(v["prompt"], v["seed"]) for v in index["videos"]] == [(p, s) for p, _ in captions for s in (0, 1)]
    assert index["step"] == 5 and index["fps"] == 8.0 and index["chunks"] == 2
    for i in range(4):
        video = read_video(folder / f"{i}.{fmt}")
        assert video.shape == (4, 16, 16, 3) and video.std() > 0  # 2 chunks of 2 frames, not blank


def test_samples_are_what_generate_makes_of_the_exported_ema(model: Path, tmp_path: Path) -> None:
    """Bit for bit: the GIF of (prompt, seed) at step 2 == `videomla generate` of step 2's export (the EMA)."""
    prompts = ["a large red circle bouncing", "a small blue square bouncing"]
    samples = {"prompts": prompts, "seeds": [3], "format": "gif"}
    cfg = sample_config(model, steps=2, samples=samples, ema={"decay": 0.5}, checkpoint={"every": 2})
    train(config_from_dict(cfg), tmp_path / "run")
    export = tmp_path / "run" / "checkpoints" / "step_00000002" / "model"
    for i, prompt in enumerate(prompts):
        out = tmp_path / f"generated-{i}.gif"
        for _ in videomla.generate(prompt, 0.5, export, out=out, device="cpu", seed=3):  # 4 frames at 8 fps
            pass
        assert (tmp_path / "run" / "samples" / "step_00000002" / f"{i}.gif").read_bytes() == out.read_bytes()
    generator, ema = (load_file(export.parent / f"{name}.safetensors") for name in ("generator", "ema"))
    assert any(not torch.equal(generator[k], ema[k]) for k in ema)  # so the test tells the two apart


def test_samples_leave_training_bit_identical(model: Path, tmp_path: Path) -> None:
    """Losses, weights, optimiser states and the saved RNG states of a run do not depend on samples."""
    base = world_config(model, steps=3, checkpoint={"every": 1, "keep_last": 3})  # no EMA: samples of the generator
    off = train(config_from_dict(base), tmp_path / "off")
    trainer = Trainer(config_from_dict({**base, "samples": {**SAMPLES, "every": 1}}), tmp_path / "on")
    on = trainer.run()
    trainer.close()
    assert on == off
    assert sample_steps(tmp_path / "on") == [1, 2, 3]
    assert trainer.stage.export_name == "generator" and trainer.stage.generator.training  # train mode restored
    on_files, off_files = run_files(tmp_path / "on" / "checkpoints"), run_files(tmp_path / "off" / "checkpoints")
    assert on_files.keys() == off_files.keys()
    for name in off_files:  # trainer.json records the config, which differs in its samples section
        if not name.endswith("trainer.json"):
            assert on_files[name] == off_files[name], name


# -- resume ------------------------------------------------------------------------------------------
def test_resume_writes_each_sample_step_once(model: Path, tmp_path: Path, monkeypatch) -> None:
    """Killed at step 5 (samples of step 4 written, newest checkpoint step 3), resumed: the samples
    of the uninterrupted run, each step once; a resumed start drops samples past its checkpoint."""
    cfg = sample_config(model, steps=6, checkpoint={"every": 3, "keep_last": 2})
    train(config_from_dict(cfg), tmp_path / "whole")
    step = Trainer.train_step

    def dies_at_step_5(self):
        if self.step == 4:
            raise RuntimeError("killed")
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_5)
    with pytest.raises(RuntimeError, match="killed"):
        train(config_from_dict(cfg), tmp_path / "split")
    monkeypatch.undo()
    assert sample_steps(tmp_path / "split") == [2, 4]
    Trainer(config_from_dict({**cfg, "samples": {**SAMPLES, "every": 3}}), tmp_path / "split", resume=True).close()
    assert sample_steps(tmp_path / "split") == [2]  # step 4's came after the checkpoint of step 3
    train(config_from_dict(cfg), tmp_path / "split", resume=True)
    assert sample_steps(tmp_path / "split") == [2, 4, 6]
    whole, split = (run_files(tmp_path / run / "samples") for run in ("whole", "split"))
    assert whole.keys() == split.keys()
    for name in whole:
        if name.endswith(".mp4"):
            assert np.array_equal(read_video(tmp_path / "whole" / "samples" / name),
                                  read_video(tmp_path / "split" / "samples" / name))  # fmt: skip
        else:
            assert whole[name] == split[name]


# -- refused -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("samples", "match"),
    [
        ({"every": 0}, r"samples\.every must be >= 1"),
        ({"every": 1.5}, r"samples\.every"),
        ({"prompts": []}, r"samples\.prompts must be non-empty"),
        ({"prompts": ["a cat", "  "]}, r"samples\.prompts must be non-empty"),
        ({"prompts": "a cat"}, r"samples\.prompts"),
        ({"count": 0}, r"samples\.count and samples\.chunks must be >= 1"),
        ({"chunks": 0}, r"samples\.count and samples\.chunks must be >= 1"),
        ({"seeds": []}, r"samples\.seeds must be distinct"),
        ({"seeds": [1, 1]}, r"samples\.seeds must be distinct"),
        ({"seeds": [-1]}, r"samples\.seeds must be distinct"),
        ({"format": "png-grid"}, r"samples\.format must be one of \['mp4', 'gif'\]"),
        ({"evry": 2}, r"unknown config key\(s\) samples\.evry"),
    ],
)
def test_bad_sample_settings_are_refused(model: Path, samples: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config_from_dict(sample_config(model, samples=samples))


def test_samples_are_off_by_default(model: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(world_config(model, steps=1))
    assert cfg.samples.every is None and not cfg.samples.due(1, 1)
    train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "samples").exists()


@pytest.mark.parametrize(("fmt", "module"), [("mp4", "av"), ("gif", "PIL")])
def test_a_missing_writer_is_refused_at_config_time(model: Path, monkeypatch, fmt: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingWriterError, match=r'pip install "videomla\[video\]"'):
        config_from_dict(sample_config(model, samples={"format": fmt}))
    config_from_dict(sample_config(model, samples={"format": fmt, "every": None}))  # off: not needed


def test_what_sampling_cannot_do_fails_before_the_first_step(model: Path, tmp_path: Path) -> None:
    from test_training import run_config, write_clips

    too_long = sample_config(model, samples={"prompts": ["a " * 17 + "circle"]})
    with pytest.raises(ValueError, match="this encoder takes at most 16"):
        Trainer(config_from_dict(too_long), tmp_path / "a")
    latents = run_config("teacher_forcing", write_clips(tmp_path / "clips"), samples={"every": 1})
    with pytest.raises(ValueError, match=r"set heldout\.path or samples\.prompts"):
        Trainer(config_from_dict(latents), tmp_path / "b")
    latents["samples"]["prompts"] = ["a cat"]
    with pytest.raises(FileNotFoundError, match=r"Wan2\.1 VAE.*checkpoint\.metadata: \{codec: \{type: wan-vae"):
        Trainer(config_from_dict(latents), tmp_path / "c")


# -- logged ------------------------------------------------------------------------------------------
class FakeSummaryWriter:
    """torch.utils.tensorboard.SummaryWriter's calls, recorded."""

    made: ClassVar[list[FakeSummaryWriter]] = []

    def __init__(self, log_dir: str, purge_step: int | None = None):
        self.scalars: list[tuple[str, float, int]] = []
        self.videos: list[tuple[str, torch.Tensor, int, float]] = []
        FakeSummaryWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_video(self, tag: str, video: torch.Tensor, global_step: int, fps: float) -> None:
        self.videos.append((tag, video, global_step, fps))

    def close(self) -> None:
        pass


@pytest.fixture
def fake_tensorboard(monkeypatch):
    FakeSummaryWriter.made = []
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return FakeSummaryWriter.made


def test_tensorboard_gets_each_sample_as_a_video(model: Path, tmp_path: Path, fake_tensorboard, monkeypatch):
    monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))
    monkeypatch.setitem(sys.modules, "moviepy.editor", types.ModuleType("moviepy.editor"))
    cfg = sample_config(model, steps=3, samples={"format": "gif"}, log={"tensorboard": True})
    train(config_from_dict(cfg), tmp_path / "run")
    (writer,) = fake_tensorboard
    assert [(tag, step) for tag, _, step, _ in writer.videos] == [(f"samples/{i}", s) for s in (2, 3) for i in range(4)]
    for tag, video, step, fps in writer.videos:
        assert video.dtype == torch.uint8 and video.shape == (1, 4, 3, 16, 16) and fps == 8.0
        gif = read_video(tmp_path / "run" / "samples" / f"step_{step:08d}" / f"{tag.split('/')[1]}.gif")
        assert np.abs(gif.astype(int) - video[0].permute(0, 2, 3, 1).numpy()).mean() < 8  # the GIF's palette
    assert {step for _, _, step in writer.scalars} == {1, 2, 3}


def test_tensorboard_without_moviepy_says_so_once(model: Path, tmp_path: Path, fake_tensorboard, monkeypatch,
                                                  capsys):  # fmt: skip
    monkeypatch.setitem(sys.modules, "moviepy.editor", None)
    cfg = sample_config(model, steps=2, log={"tensorboard": True})
    train(config_from_dict(cfg), tmp_path / "run")
    (writer,) = fake_tensorboard
    assert writer.videos == [] and sample_steps(tmp_path / "run") == [2]
    err = capsys.readouterr().err
    assert err.count("TensorBoard sample videos need moviepy 1.x") == 1 and 'pip install "videomla[tensorboard]"' in err


def test_real_tensorboard_shows_the_samples(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard", exc_type=ImportError)
    pytest.importorskip("moviepy.editor", exc_type=ImportError)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = sample_config(model, steps=2, log={"tensorboard": True})
    train(config_from_dict(cfg), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["images"]) == [f"samples/{i}" for i in range(4)]
    (image,) = events.Images("samples/0")
    assert image.step == 2 and (image.width, image.height) == (16, 16)
    assert image.encoded_image_string.startswith(b"GIF89a")


class FakeWandb(types.ModuleType):
    """The few calls of ``wandb`` the logger makes, recorded."""

    def __init__(self):
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.util = types.SimpleNamespace(generate_id=lambda: f"run{len(self.inits)}")
        self.Video = lambda path, caption: ("video", Path(path).name, caption)

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda data, step: self.logged.append((data, step)), finish=lambda: None)


def test_wandb_logs_metrics_and_samples_and_resumes_its_run(model: Path, tmp_path: Path, monkeypatch) -> None:
    """Rows (held-out ones on every step, log.every 4) and videos reach W&B in step order (W&B drops
    steps that go back); the resumed run logs into the same W&B run."""
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    cfg = sample_config(
        model, steps=3, checkpoint={"every": 3}, heldout={"every": 1, "clips": 2},
        log={"every": 4, "wandb": {"project": "videomla-tests", "mode": "offline"}},
    )  # fmt: skip
    train(config_from_dict(cfg), tmp_path / "run")
    train(config_from_dict({**cfg, "steps": 4}), tmp_path / "run", resume=True)
    assert [i["id"] for i in wandb.inits] == ["run0", "run0"]  # the resumed run continues the W&B run
    first = wandb.inits[0]
    assert first["project"] == "videomla-tests" and first["mode"] == "offline" and first["resume"] == "allow"
    assert first["config"]["samples"]["every"] == 2
    steps = [step for _, step in wandb.logged]
    assert steps == sorted(steps)
    assert [step for data, step in wandb.logged if "loss" in data] == [1, 2, 3, 4]
    videos = [(step, data) for data, step in wandb.logged if "samples/0" in data]
    assert [step for step, _ in videos] == [2, 3, 4]  # every 2 and the last step of each call
    prompt = json.loads((tmp_path / "run" / "samples" / "step_00000004" / INDEX_FILE).read_text())["videos"][1]
    assert videos[2][1]["samples/1"] == ("video", "1.mp4", f"{prompt['prompt']} (seed 1)")


def test_wandb_asked_for_but_missing_names_the_extra(model: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r'log\.wandb needs wandb.*pip install "videomla\[wandb\]"'):
        config_from_dict(world_config(model, log={"wandb": {"project": "p"}}))
    with pytest.raises(ValueError, match=r"log\.wandb\.project is required"):
        config_from_dict(world_config(model, log={"wandb": {}}))


# -- FSDP2 -------------------------------------------------------------------------------------------
def test_two_processes_write_the_samples_of_one(model: Path, tmp_path: Path) -> None:
    """Under torchrun the exported weights are gathered and the main process alone samples them."""
    from test_training_fsdp import torchrun_train

    cfg = sample_config(model, steps=2, samples={"format": "gif"})
    file = tmp_path / "run.yaml"
    file.write_text(json.dumps(cfg))
    train(config_from_dict(cfg), tmp_path / "one")
    torchrun_train(file, tmp_path / "two")
    one, two = (run_files(tmp_path / run / "samples") for run in ("one", "two"))
    assert one.keys() == two.keys() and len(one) == 5  # step 2: four GIFs and samples.json
    for name in one:  # the same weights up to FSDP's summation order, so the same frames up to rounding
        if name.endswith(".gif"):
            a, b = (read_video(tmp_path / run / "samples" / name).astype(int) for run in ("one", "two"))
            assert np.abs(a - b).mean() < 0.5, name
        else:
            assert one[name] == two[name]
