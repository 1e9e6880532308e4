"""Module-level functions for :func:`nnunet_ext.bench.harness.run_isolated` to run in its workers."""

import os
import time

import torch


def report(x):
    return {"x": x, "pid": os.getpid(), "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


def fail():
    raise ValueError("plan   not\ndivisible")


def die():
    os._exit(3)


def sleep(seconds):
    time.sleep(seconds)
    return {}


def cpu_memory_phases():
    """Above-baseline peak resident set of a 64 MiB phase, then (after reset) of an 8 MiB one, in a
    fresh process (in a long-lived one, freed heap pages may already be resident)."""
    from nnunet_ext.bench.memory import PeakMemory

    mib = 2 ** 20
    memory = PeakMemory("cpu")
    if not memory.resettable:
        return {"resettable": False}
    big = torch.ones(64 * mib // 4)
    first = memory.above_baseline()
    del big
    memory.reset()
    small = torch.ones(8 * mib // 4)
    second = memory.above_baseline()
    del small
    return {"resettable": True, "first": first, "second": second}
