"""Compare the per-step losses of two runs' metrics.csv (e.g. one GPU vs two under torchrun)."""

import csv
import sys


def losses(path: str) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")}


a, b = losses(sys.argv[1]), losses(sys.argv[2])
steps = sorted(set(a) & set(b))
if not steps:
    sys.exit(f"no common steps between {sys.argv[1]} and {sys.argv[2]}")
rel = [abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in steps]
for s, r in zip(steps, rel):
    print(f"step {s:4d}  {a[s]:.6f}  {b[s]:.6f}  rel diff {r:.2e}")
print(f"{len(steps)} common steps; max relative loss difference {max(rel):.2e}")
