"""A markdown table of score files of scripts/score_teacher.py, each paired against a reference.

    python scripts/paired_table.py --runs "16 euler steps given 1 1x" "16 euler steps given 1 12x" \
        --reference dense=DENSE.json --models mla-svd=SVD.json mla-random=RANDOM.json \
        [--baselines BASELINES.json] [--metrics overall adherence persistence pass_rate]

One row per (model, run): the means of ``--metrics`` and the paired difference in Overall against
the reference's same run with its 95% CI (scripts/compare_scores.py). ``--baselines``: a file whose
every run is printed first as an unpaired row (the real clips and the degenerate continuations), so
the table carries its own floor and ceiling. This is what regenerates docs/reproduction.md's
continuation tables from the committed per-video JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_scores import paired, videos


def labelled(item: str) -> tuple[str, str]:
    label, sep, path = item.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=FILE, got {item!r}")
    return label, path


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(
    runs: list[str],
    reference: tuple[str, str],
    models: list[tuple[str, str]],
    metrics: list[str],
    baselines: str | None = None,
) -> str:
    lines = [row(["model", "run", *metrics, f"paired overall vs {reference[0]}, 95% CI"])]
    lines.append(row(["---"] * (len(metrics) + 3)))
    if baselines:
        for name, run in json.loads(Path(baselines).read_text())["runs"].items():
            lines.append(row([f"*{name}*", "", *(f"{run['mean'][m]:.3f}" for m in metrics), ""]))
    for run in runs:
        ref = videos(reference[1], run)
        for label, path in [reference, *models]:
            mine = videos(path, run)
            means = [f"{sum(v[m] for v in mine) / len(mine):.3f}" for m in metrics]
            diff = ""
            if path != reference[1]:
                n, mean, low, high = paired(ref, mine, "overall")
                diff = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] (n {n})"
            lines.append(row([label, run, *means, diff]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run names, the same in every file")
    ap.add_argument("--reference", type=labelled, required=True, help="LABEL=FILE every model is paired against")
    ap.add_argument("--models", type=labelled, nargs="*", default=[], help="LABEL=FILE ...")
    ap.add_argument("--baselines", help="a score file printed unpaired first (real and degenerate rows)")
    ap.add_argument("--metrics", nargs="+", default=["overall", "adherence", "persistence", "pass_rate"])
    args = ap.parse_args()
    print(table(args.runs, args.reference, args.models, args.metrics, args.baselines))


if __name__ == "__main__":
    main()
