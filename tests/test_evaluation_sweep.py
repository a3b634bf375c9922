"""Every randomized evaluator test over many seeds in one process (opt-in: skipped unless asked for).

    VIDEOMLA_SEED_SWEEP=300 pytest tests/test_evaluation_sweep.py -q          # all of them, 300 seeds
    VIDEOMLA_SEED_SWEEP=300 pytest tests/test_evaluation_sweep.py -q -k detection

Seeds are drawn from ``random.Random(VIDEOMLA_SWEEP_BASE)`` (default 0), so a run is repeatable;
a failure names its seed, which ``VIDEOMLA_TEST_SEED=<seed> pytest tests/test_evaluation*.py`` replays.
"""

from __future__ import annotations

import inspect
import os
import random

import pytest
import torch

import test_evaluation
import test_evaluation_degenerate

COUNT = int(os.environ.get("VIDEOMLA_SEED_SWEEP", "0"))
_rng = random.Random(int(os.environ.get("VIDEOMLA_SWEEP_BASE", "0")))
SEEDS = [_rng.randrange(2**31) for _ in range(COUNT)]


def randomized_tests() -> list:
    """(id, function, extra kwargs) for every test of the evaluator's test modules that takes a seed
    (the CLI test, which also needs pytest's tmp_path and capsys, is left to the normal run)."""
    out = []
    for module in (test_evaluation, test_evaluation_degenerate):
        for name, fn in vars(module).items():
            if not name.startswith("test_") or "seed" not in inspect.signature(fn).parameters:
                continue
            marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
            if set(inspect.signature(fn).parameters) - {"seed", *(m.args[0] for m in marks)}:
                continue
            if marks:  # one parametrize (argname, values)
                arg, values = marks[0].args
                out += [(f"{name}[{v}]", fn, {arg: v}) for v in values]
            else:
                out.append((name, fn, {}))
    return out


TESTS = randomized_tests() if COUNT else []


@pytest.mark.skipif(not COUNT, reason="set VIDEOMLA_SEED_SWEEP=N to run every randomized evaluator test over N seeds")
@pytest.mark.parametrize("case", TESTS, ids=[t[0] for t in TESTS])
def test_sweep(case):
    name, fn, kwargs = case
    failures = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        try:
            fn(seed=seed, **kwargs)
        except AssertionError as err:
            failures.append(f"VIDEOMLA_TEST_SEED={seed}: {str(err).splitlines()[0][:200]}")
    print(f"{name}: {len(failures)} of {len(SEEDS)} seeds failed")
    assert not failures, f"{len(failures)} of {len(SEEDS)} seeds failed:\n" + "\n".join(failures)
