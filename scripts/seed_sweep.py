"""Run every seeded test over many seeds and list the seeds that fail.

A test is *seeded* when it uses the ``seed`` fixture of tests/conftest.py (directly or through
another fixture): each run draws a fresh seed, so a test that holds only for most seeds fails CI
by chance. This script finds those tests, times each once, then runs each again with as many
seeds as fit its time budget (hundreds for the fast ones, a few for the slow ones) and prints,
per test, how many seeds failed and which, with the command that reproduces one.

    python scripts/seed_sweep.py                       # every seeded test, 30 s each, <= 500 seeds
    python scripts/seed_sweep.py tests/test_rank.py -k exact --max-seeds 2000
    python scripts/seed_sweep.py --rotate 8 --budget 4 --max-seeds 40   # CI: 1/8 of the tests, by day

Exit status 1 when any seed failed, 0 otherwise. Seeds come from ``--base-seed`` (default: fresh,
printed; with ``--rotate``: the day, so a CI rerun on the same day repeats the same seeds).

How: the script passes a JSON *plan* (``{test function: [seeds]}``) to pytest through
``VIDEOMLA_SEED_PLAN``; tests/conftest.py parametrizes the ``seed`` fixture from it. The script
also acts as a small pytest plugin (``-p seed_sweep``) that keeps only seeded tests and logs each
outcome with its seed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LOG_ENV = "VIDEOMLA_SEED_SWEEP_LOG"


# -- the pytest plugin side (loaded in the pytest process with -p seed_sweep) -------------------------
def pytest_collection_modifyitems(config, items) -> None:
    log = os.environ.get(_LOG_ENV)
    if not log:
        return
    seeded = [item for item in items if "seed" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in seeded])
    items[:] = seeded
    if config.option.collectonly:
        with open(log, "a") as f:
            f.writelines(json.dumps({"collected": item.nodeid}) + "\n" for item in seeded)


def pytest_runtest_logreport(report) -> None:
    log = os.environ.get(_LOG_ENV)
    if not log or (report.when != "call" and report.outcome != "failed"):
        return
    seed = dict(report.user_properties).get("seed")
    line = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "seed": seed}
    line["duration"] = report.duration
    if report.outcome == "failed":
        text = str(report.longrepr)
        errors = [s for s in text.splitlines() if s.startswith("E ")]
        line["error"] = (errors[0][1:].strip() if errors else text.strip().splitlines()[-1])[:200]
    with open(log, "a") as f:
        f.write(json.dumps(line) + "\n")


# -- the driver ---------------------------------------------------------------------------------------
def function_of(nodeid: str) -> str:
    """'tests/x.py::test_a[0.9-seed12]' -> 'tests/x.py::test_a' (the key of the seed plan)."""
    return nodeid.split("[", 1)[0]


def without_seed(nodeid: str) -> str:
    """'t.py::f[seed12-5.0-square]' -> 't.py::f[5.0-square]'; 't.py::f[seed12]' -> 't.py::f'."""
    m = re.fullmatch(r"(.*?)\[(.*)\]", nodeid)
    if m is None:
        return nodeid
    inner = "-".join(part for part in m[2].split("-") if not re.fullmatch(r"seed\d+", part))
    return f"{m[1]}[{inner}]" if inner else m[1]


def run_pytest(args: list[str], plan: dict[str, list[int]] | None, log: Path, threads: int) -> int:
    env = {**os.environ, _LOG_ENV: str(log), "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), *_pythonpath()])}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.pop("VIDEOMLA_TEST_SEED", None)
    if plan is not None:
        plan_file = log.with_suffix(".plan.json")
        plan_file.write_text(json.dumps(plan))
        env["VIDEOMLA_SEED_PLAN"] = str(plan_file)
    cmd = [sys.executable, "-m", "pytest", "-p", "seed_sweep", "-p", "no:cacheprovider", "-q", "--tb=line"]
    cmd += ["-o", "console_output_style=count", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def read_log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", default=["tests"], help="test files or folders (default tests)")
    p.add_argument("-k", dest="keyword", help="pytest -k expression to pick tests")
    p.add_argument("--budget", type=float, default=30.0, help="seconds of runs per test function (default 30)")
    p.add_argument("--min-seeds", type=int, default=3, help="seeds per test however slow it is (default 3)")
    p.add_argument("--max-seeds", type=int, default=500, help="seeds per test however fast it is (default 500)")
    p.add_argument("--base-seed", type=int, help="draws the seeds (default: fresh; with --rotate: the day)")
    p.add_argument("--rotate", type=int, metavar="N", help="run 1/N of the seeded tests, a different share each day")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the test process (default 1)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.min_seeds < 1 or args.max_seeds < args.min_seeds:
        p.error("need 1 <= --min-seeds <= --max-seeds")

    day = (datetime.date.today() - datetime.date(2026, 1, 1)).days
    base = args.base_seed if args.base_seed is not None else (day if args.rotate else random.randrange(2**31))
    draw = random.Random(base)
    select = [*args.paths] + (["-k", args.keyword] if args.keyword else [])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seed-sweep-") as tmp:
        # 0. which tests are seeded (collection only), and today's share of them with --rotate
        listing = Path(tmp) / "collected.jsonl"
        run_pytest([*select, "--collect-only"], None, listing, args.threads)
        functions = sorted({function_of(r["collected"]) for r in read_log(listing)})
        if args.rotate:
            functions = [f for i, f in enumerate(functions) if i % args.rotate == day % args.rotate]
        if not functions:
            print("no seeded tests found (tests using the `seed` fixture)", file=sys.stderr)
            return 2
        # 1. time each once (with a fresh seed each: already a first sample)
        first = Path(tmp) / "first.jsonl"
        run_pytest([*functions] + (["-k", args.keyword] if args.keyword else []), None, first, args.threads)
        records = read_log(first)
        cost: dict[str, float] = defaultdict(float)
        for r in records:
            cost[function_of(r["nodeid"])] += r["duration"]
        functions = sorted(f for f in cost if f in set(functions))
        if not functions:
            print("no seeded test ran (none matched the selection and -k together, or all skipped)", file=sys.stderr)
            return 2
        # 2. as many seeds per function as its budget allows
        plan = {}
        for f in functions:
            n = int(args.budget / max(cost[f], 1e-3))
            plan[f] = [draw.randrange(2**31) for _ in range(max(args.min_seeds, min(args.max_seeds, n)))]
        second = Path(tmp) / "sweep.jsonl"
        nodeids = sorted({r["nodeid"].split("[", 1)[0] for r in records if function_of(r["nodeid"]) in plan})
        run_pytest(nodeids + (["-k", args.keyword] if args.keyword else []), plan, second, args.threads)
        sweep = [r for r in read_log(second)] + [r for r in records if function_of(r["nodeid"]) in plan]

    runs: dict[str, int] = defaultdict(int)
    failed: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for r in sweep:
        f = function_of(r["nodeid"])
        runs[f] += 1
        if r["outcome"] == "failed":
            failed[f].append((r["seed"], r["nodeid"], r.get("error", "")))
    width = max(len(f) for f in plan)
    print(f"seed sweep: {len(plan)} seeded test functions, base seed {base}, {time.monotonic() - started:.0f} s")
    print(f"{'test':<{width}}  {'runs':>5}  {'failed':>6}  seeds that fail")
    for f in sorted(plan):
        bad = failed.get(f, [])
        seeds = sorted({s for s, _, _ in bad if s is not None})
        shown = ", ".join(map(str, seeds[:12])) + (f" ... ({len(seeds)} seeds)" if len(seeds) > 12 else "")
        print(f"{f:<{width}}  {runs[f]:>5}  {len(bad):>6}  {shown}")
    for f in sorted(failed):
        seed, nodeid, error = failed[f][0]
        clean = without_seed(nodeid)
        print(f"\n{f}: {len(failed[f])}/{runs[f]} runs failed, e.g. {error}")
        print(f"  reproduce: VIDEOMLA_TEST_SEED={seed} pytest '{clean}'")
    if args.json:
        results = {
            "base_seed": base,
            "tests": {
                f: {"runs": runs[f], "failing_seeds": sorted({s for s, _, _ in failed.get(f, [])})} for f in plan
            },
        }
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
