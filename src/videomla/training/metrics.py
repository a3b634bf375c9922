"""Metrics to ``metrics.csv`` (always), TensorBoard (when ``torch.utils.tensorboard`` imports) and W&B (``log.wandb``).

Only the main process writes. On resume, rows past the resumed step are dropped first, so the
CSV reads as one uninterrupted run (TensorBoard purges those steps too). Sample rollouts
(:mod:`.samples`) go to TensorBoard as videos (``SummaryWriter.add_video``, which needs
moviepy 1.x) and to W&B as ``wandb.Video`` of the written files.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io_utils import atomic_write_json

if TYPE_CHECKING:
    from .config import WandbSection
    from .samples import Sample

STEP = "step"
WANDB_RUN_FILE = "wandb.json"  # the W&B run id, so a resumed run logs into the same W&B run
TENSORBOARD_VIDEO_HINT = 'pip install "videomla[tensorboard]"'


class MetricsLogger:
    """``videos``: sample rollouts will be logged (TensorBoard then checks it can encode them)."""

    def __init__(
        self,
        out_dir: Path,
        names: tuple[str, ...],
        enabled: bool,
        tensorboard: bool,
        resume_step: int = 0,
        *,
        videos: bool = False,
        wandb: WandbSection | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.enabled = enabled
        self.columns = (STEP, *names)
        self.file = Path(out_dir) / "metrics.csv"
        self.writer = None
        self.tensorboard_videos = False  # log_samples shows frames: the sampler must keep them
        self.wandb_run = None
        if not enabled:
            return
        self._start(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                print(f"tensorboard unavailable ({err}); metrics go to {self.file} only", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1)
                self.tensorboard_videos = videos and _can_encode_videos(Path(out_dir))
        if wandb is not None:
            self.wandb_run = _start_wandb(wandb, Path(out_dir), resume_step > 0, config or {})

    def _start(self, resume_step: int) -> None:
        rows: list[dict[str, str]] = []
        if self.file.exists():
            with self.file.open(newline="") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != self.columns:
                    raise ValueError(
                        f"{self.file} has columns {reader.fieldnames}, this stage logs {list(self.columns)}: "
                        f"use another --out"
                    )
                rows = [r for r in reader if int(r[STEP]) <= resume_step]
        tmp = self.file.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.file)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        unknown = sorted(set(values) - set(self.columns))
        if unknown:
            raise KeyError(f"metrics {unknown} are not columns of {self.file}")
        with self.file.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({STEP: step, **{k: f"{v:.9g}" for k, v in values.items()}})
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def log_samples(self, step: int, samples: Sequence[Sample], fps: float) -> None:
        """Sample ``i`` as ``samples/i``: a TensorBoard video and a W&B video (captioned with its prompt)."""
        if not self.enabled:
            return
        for s in samples:
            if self.tensorboard_videos and s.frames is not None:
                video = torch.from_numpy(s.frames).permute(0, 3, 1, 2)[None]  # [1, T, 3, H, W] uint8
                self.writer.add_video(f"samples/{s.index}", video, step, fps=fps)
        if self.wandb_run is not None and samples:
            import wandb

            videos = {
                f"samples/{s.index}": wandb.Video(str(s.path), caption=f"{s.prompt} (seed {s.seed})") for s in samples
            }
            self.wandb_run.log(videos, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _can_encode_videos(out_dir: Path) -> bool:
    """``SummaryWriter.add_video`` encodes GIFs through ``moviepy.editor`` (moviepy 1.x); say once when it cannot."""
    try:
        import moviepy.editor  # noqa: F401
    except ImportError as err:
        print(
            f"TensorBoard sample videos need moviepy 1.x ({err}): {TENSORBOARD_VIDEO_HINT}; "
            f"the samples are in {out_dir / 'samples'}",
            file=sys.stderr,
        )
        return False
    return True


def _start_wandb(section: WandbSection, out_dir: Path, resume: bool, config: dict[str, Any]) -> Any:
    """A W&B run; a resumed training run continues the W&B run its id file names."""
    import wandb

    id_file = out_dir / WANDB_RUN_FILE
    if resume and id_file.is_file():
        run_id = json.loads(id_file.read_text())["id"]
    else:
        run_id = wandb.util.generate_id()
        atomic_write_json(id_file, {"id": run_id})
    return wandb.init(
        project=section.project, entity=section.entity, mode=section.mode, id=run_id, resume="allow",
        dir=str(out_dir), config=config,
    )  # fmt: skip


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as dicts of floats (blank cells left out)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
