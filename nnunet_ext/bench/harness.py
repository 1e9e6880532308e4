"""How the benchmarks take a measurement: the clock, and a fresh interpreter per measurement.

- :func:`seconds_per_call`: ``torch.utils.benchmark.Timer.timeit`` -- two untimed warm-up calls,
  then ``repeats`` calls timed as one block; the accelerator is synchronised when the clock is
  read, and the calls run under this process's torch thread count (``Timer`` would otherwise use
  one thread).
- :func:`seconds_once`: one call on the same clock, for what is too slow to repeat.
- :func:`run_isolated`: a measuring function in a fresh ``python -m nnunet_ext.bench.harness``
  worker, so that one measurement's memory peak and allocator caches cannot reach the next.
  The worker prints the function's row (a JSON object) on a line of its own; whatever goes
  wrong comes back as a row ``{"error": "..."}``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from typing import Callable, Sequence

_ROW_MARK = "NNUNET_EXT_BENCH_ROW "


def seconds_per_call(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Mean seconds per call of ``fn()`` over ``repeats`` timed calls, after ``warmup`` untimed
    calls of ours and the two of ``Timer.timeit``."""
    import torch
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(number=repeats).mean


def seconds_once(fn: Callable[[], object]) -> float:
    """Seconds of one call of ``fn()`` on ``torch.utils.benchmark``'s clock."""
    from torch.utils.benchmark import timer

    start = timer()
    fn()
    return timer() - start


def run_isolated(fn: Callable[..., dict], kwargs: dict, threads: int, timeout: float | None = None) -> dict:
    """``fn(**kwargs)`` in a fresh interpreter with ``threads`` torch and OpenMP threads.

    ``fn`` is a module-level function whose keyword arguments and returned row are JSON. Returns
    the row, or ``{"error": ...}`` when ``fn`` raised, the worker died or ran past ``timeout``.
    """
    target = f"{fn.__module__}:{fn.__qualname__}"
    cmd = [sys.executable, "-m", __name__, target, str(int(threads)), json.dumps(kwargs)]
    env = dict(os.environ, OMP_NUM_THREADS=str(int(threads)))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(_ROW_MARK):
            return json.loads(line[len(_ROW_MARK):])
    tail = (p.stderr or p.stdout).strip().splitlines()
    return {"error": f"worker exited with {p.returncode}: {tail[-1] if tail else 'no output'}"}


def run_isolated_rows(fn: Callable[..., dict], configs: Sequence[dict], threads: int | None,
                      timeout: float | None = None, on_row: Callable[[int, int, dict], None] | None = None,
                      keys: Sequence[str] = ("name",)) -> list[dict]:
    """:func:`run_isolated` of ``fn`` for each config, in order (``threads`` default: torch's).

    A failed run becomes ``{"arch": config["name"], <other keys>: ..., "error": ...}``; ``on_row(i, n, row)``
    is called after each run."""
    import torch

    rows = []
    for i, config in enumerate(configs):
        row = run_isolated(fn, config, threads or torch.get_num_threads(), timeout)
        if "error" in row:
            row = {"arch": config["name"], **{k: config[k] for k in keys if k != "name"}, "error": row["error"]}
        rows.append(row)
        if on_row:
            on_row(i, len(configs), row)
    return rows


def _worker_main(argv: list[str]) -> int:
    target, threads, kwargs = argv[0], int(argv[1]), json.loads(argv[2])
    import torch

    torch.set_num_threads(threads)
    module, name = target.split(":")
    try:
        row = getattr(importlib.import_module(module), name)(**kwargs)
    except Exception as e:  # the caller reports it in its table and goes on with the next measurement
        row = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    print(_ROW_MARK + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
