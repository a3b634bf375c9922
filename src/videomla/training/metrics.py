"""Metrics to ``metrics.csv`` (always) and TensorBoard (when ``torch.utils.tensorboard`` imports).

Only the main process writes. On resume, rows past the resumed step are dropped first, so the
CSV reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

STEP = "step"


class MetricsLogger:
    def __init__(self, out_dir: Path, names: tuple[str, ...], enabled: bool, tensorboard: bool, resume_step: int = 0):
        self.enabled = enabled
        self.columns = (STEP, *names)
        self.file = Path(out_dir) / "metrics.csv"
        self.writer = None
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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as dicts of floats (blank cells left out)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
