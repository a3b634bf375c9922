"""Paired differences between two score files of scripts/score_teacher.py, with 95% CIs.

    python scripts/compare_scores.py A.json "RUN A" B.json "RUN B" [--metrics overall adherence]

Videos are paired by (prompt, noise seed), in file order; the difference is B - A, its CI the t-interval of the
paired differences (what docs/reproduction.md's comparison tables print).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from statistics import NormalDist


def videos(path: str, run: str) -> list[dict]:
    data = json.loads(Path(path).read_text())
    if run not in data["runs"]:
        sys.exit(f"{path} has no run {run!r}; it has: {', '.join(data['runs'])}")
    return data["runs"][run]["videos"]


def t_quantile(p: float, dof: int) -> float:
    """Student-t quantile by the Cornish-Fisher expansion around the normal one: 2.0395 at
    p = 0.975 and dof 31 (tables: 2.0395); off by 0.003 at dof 5, by < 2e-4 from dof 10."""
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3


def paired(a: list[dict], b: list[dict], metric: str) -> tuple[int, float, float, float]:
    """(n, mean of b - a, CI low, CI high). Videos pair by position (a prompt may repeat), which
    must hold the same (prompt, noise seed) in both files."""
    if [(v["prompt"], v["noise_seed"]) for v in a] != [(v["prompt"], v["noise_seed"]) for v in b]:
        sys.exit("the two runs do not hold the same (prompt, noise seed) videos in the same order")
    diffs = [y[metric] - x[metric] for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return n, mean, mean - half, mean + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("run_a")
    ap.add_argument("b")
    ap.add_argument("run_b")
    ap.add_argument("--metrics", nargs="+", default=["overall"])
    args = ap.parse_args()
    a, b = videos(args.a, args.run_a), videos(args.b, args.run_b)
    for metric in args.metrics:
        n, mean, low, high = paired(a, b, metric)
        print(f"{metric}: n {n}, mean difference {mean:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
