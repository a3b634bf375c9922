"""Finite-or-fail training: a NaN / Inf loss, gradient or weight stops the run at a named step, exit
status 1, and the last finite checkpoint survives ``keep_last`` (CPU, tiny models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_training import run_config, write_clips
from videomla.cli import main as cli_main
from videomla.training.checkpointing import list_checkpoints
from videomla.training.config import config_from_dict
from videomla.training.metrics import read_metrics
from videomla.training.trainer import NonFiniteError, Trainer, train


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clips(tmp_path_factory.mktemp("finite") / "clips")


def finite_weights(step_dir: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(step_dir / "generator.safetensors").values())


def test_diverging_lr_stops_at_the_first_nan_step_and_keeps_the_finite_checkpoint(clips: Path, tmp_path: Path):
    cfg = run_config("teacher_forcing", clips, steps=6, optim={"lr": 1e6}, checkpoint={"every": 1, "keep_last": 2})
    with pytest.raises(NonFiniteError, match=r"non-finite .*loss = nan at step 2:.*step_00000001"):
        train(config_from_dict(cfg), tmp_path / "run")
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == ["step_00000001"] and finite_weights(kept[0])  # nothing of step 2 saved
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2] and math.isfinite(rows[0]["loss"]) and math.isnan(rows[1]["loss"])


def test_a_planted_nan_clip_names_its_step_and_keep_last_spares_the_last_finite(tmp_path: Path):
    data = write_clips(tmp_path / "clips", n=5)
    bad = data / "clip_003.safetensors"  # no shuffle, batch 1: drawn at step 4
    tensors = load_file(bad)
    tensors["latents"][0, 1, 2, 3] = float("nan")
    save_file(tensors, bad, metadata={"caption": "c3"})
    cfg = run_config("teacher_forcing", data, steps=5, data__batch_size=1, data__shuffle=False,
                     checkpoint={"every": 1, "keep_last": 1}, log={"every": 2, "tensorboard": False})  # fmt: skip
    with pytest.raises(NonFiniteError, match="at step 4"):
        train(config_from_dict(cfg), tmp_path / "run")
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == ["step_00000003"] and finite_weights(kept[0])
    # with the clip repaired, the run resumes from that checkpoint and finishes finite
    tensors["latents"] = tensors["latents"].nan_to_num(0.0)
    save_file(tensors, bad, metadata={"caption": "c3"})
    train(config_from_dict(cfg), tmp_path / "run", resume=True)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000005"]


def test_non_finite_weights_are_never_saved(clips: Path, tmp_path: Path):
    cfg = run_config("teacher_forcing", clips, steps=3)
    trainer = Trainer(config_from_dict(cfg), tmp_path / "run")
    trainer.train_step()
    trainer.save()
    with torch.no_grad():
        trainer.stage.generator.head.head.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weights in generator \(head\.head\.weight\) at step 1"):
        trainer.save()
    trainer.close()
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000001"]
    assert finite_weights(tmp_path / "run" / "checkpoints" / "step_00000001")


def test_cli_exits_1_with_one_line_naming_the_step(clips: Path, tmp_path: Path, capsys):
    cfg = run_config("teacher_forcing", clips, steps=4, optim={"lr": 1e6})
    file = tmp_path / "tf.yaml"
    file.write_text(json.dumps(cfg))
    assert cli_main(["train", str(file), "--out", str(tmp_path / "run")]) == 1  # a failed run, not bad input
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("videomla")]
    assert len(err) == 1 and err[0].startswith("videomla train: error: NonFiniteError: non-finite")
    assert "loss = nan at step 2" in err[0] and "Traceback" not in text
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == []  # every=2: none was finite
