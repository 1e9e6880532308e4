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
