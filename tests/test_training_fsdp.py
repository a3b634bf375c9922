"""FSDP2 over 2 CPU processes (torchrun, gloo) == 1 process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from test_training import one_thread, run_config, write_clips  # noqa: F401 (autouse fixture)
from videomla.checkpoint import save_model
from videomla.training.config import config_from_dict
from videomla.training.metrics import read_metrics
from videomla.training.trainer import train

from conftest import tiny_model

CLI = "import sys; from videomla.cli import main; sys.exit(main())"  # what the videomla entry point runs


def torchrun_train(config: Path, out: Path, *flags: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python"]
    cmd += [sys.executable, "-c", CLI, "train", str(config), "--out", str(out), "--device", "cpu", *flags]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def assert_same_metrics(one: list[dict], two: list[dict]) -> None:
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a, b)


def test_two_processes_match_one_teacher_forcing(tmp_path: Path) -> None:
    cfg = run_config("teacher_forcing", write_clips(tmp_path / "clips"), steps=3, activation_checkpointing=True)
    cfg["data"]["text_dropout"] = 0.5
    file = tmp_path / "tf.yaml"
    file.write_text(json.dumps(cfg))
    train(config_from_dict(cfg), tmp_path / "one")
    torchrun_train(file, tmp_path / "two")
    assert_same_metrics(read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv"))
    record = json.loads((tmp_path / "two" / "checkpoints" / "step_00000003" / "trainer.json").read_text())
    assert record["world_size"] == 2


def test_two_processes_resume_a_one_process_dmd_run(tmp_path: Path) -> None:
    """Steps 3-4 of DMD (rollouts through forward_chunk, critic, EMA) on 2 processes, resumed from 1."""
    torch.manual_seed(0)
    save_model(tiny_model(), tmp_path / "teacher")
    cfg = run_config("dmd", write_clips(tmp_path / "clips"), steps=4, teacher={"checkpoint": str(tmp_path / "teacher")})
    file = tmp_path / "dmd.yaml"
    file.write_text(json.dumps(cfg))
    train(config_from_dict(cfg), tmp_path / "one")
    train(config_from_dict({**cfg, "steps": 2}), tmp_path / "two")
    torchrun_train(file, tmp_path / "two", "--resume")
    one, two = read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv")
    assert "generator_loss" in one[2]  # step 3 updates the generator (critic_updates 2)
    assert_same_metrics(one, two)
    record = json.loads((tmp_path / "two" / "checkpoints" / "step_00000004" / "trainer.json").read_text())
    assert record["world_size"] == 2 and record["data"] == {"samples_seen": 8}
