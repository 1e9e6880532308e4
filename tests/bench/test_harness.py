"""The clock (torch.utils.benchmark.Timer) and the fresh-interpreter workers of every benchmark."""

import os
import time
from pathlib import Path

import pytest
import torch

from nnunet_ext.bench.harness import run_isolated, seconds_once, seconds_per_call
from tests.bench import workers

ROOT = Path(__file__).resolve().parents[2]


def test_seconds_per_call_counts_warmup_and_repeats_and_keeps_threads():
    calls, threads = [], []

    def fn():
        calls.append(1)
        threads.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seconds_per_call(fn, repeats=5, warmup=1)
    finally:
        torch.set_num_threads(before)
    assert len(calls) == 1 + 2 + 5            # ours, Timer.timeit's two, the timed ones
    assert set(threads) == {2}                # not Timer's default of one thread


def test_seconds_per_call_and_once_measure_the_call():
    mean = seconds_per_call(lambda: time.sleep(0.02), repeats=3)
    assert 0.02 <= mean < 1.0
    calls = []
    once = seconds_once(lambda: (calls.append(1), time.sleep(0.05)))
    assert calls == [1] and 0.05 <= once < 1.0


@pytest.fixture
def importable_tests(monkeypatch):
    """The workers import ``tests.bench.workers``: the repository root on their path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def test_run_isolated_returns_the_row_of_a_fresh_interpreter(importable_tests):
    row = run_isolated(workers.report, {"x": [1, 2]}, threads=1)
    assert row["x"] == [1, 2] and row["pid"] != os.getpid()
    assert row["threads"] == 1 and row["omp"] == "1"


def test_run_isolated_turns_failures_into_error_rows(importable_tests):
    assert run_isolated(workers.fail, {}, threads=1) == {"error": "ValueError: plan not divisible"}
    assert run_isolated(workers.die, {}, threads=1) == {"error": "worker exited with 3: no output"}
    assert run_isolated(workers.sleep, {"seconds": 60}, threads=1, timeout=1) == {"error": "timed out after 1 s"}
