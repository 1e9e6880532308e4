"""Seconds per training iteration of any nnU-Net trainer: :class:`StepTimingMixin`.

Mixed in before an ``nnUNetTrainer`` (``class T(StepTimingMixin, SomeTrainer)``), it times
nnU-Net's ``train_step`` (forward, backward and optimizer step of one batch; data loading
excluded). Each epoch's median goes to the training log as
``Train step: <s> s/iteration (median of <n>)``, and at the end of training rank 0 writes
:data:`TIMING_FILE` into the fold folder: every step's seconds by epoch and the median over the
epochs after the first (the first is warm-up). ``nnunet-ext demo`` compares trainers with it
(:func:`read_step_times`).

The mixin defines no ``__init__``: nnU-Net records the most derived ``__init__``'s parameters for
its checkpoints, so a trainer keeps its own signature.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

from nnunet_ext.io import write_json

#: written into the fold folder at the end of training
TIMING_FILE = "train_step_seconds.json"


class StepTimingMixin:
    """Times ``train_step``; logs each epoch's median and writes :data:`TIMING_FILE` at the end."""

    @property
    def step_seconds(self) -> dict[int, list[float]]:
        """Epoch -> seconds of each of its train steps so far."""
        return self.__dict__.setdefault("_step_seconds", {})

    def train_step(self, batch: dict) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = super().train_step(batch)  # returns the loss on the CPU, so the GPU work is done
        self.step_seconds.setdefault(self.current_epoch, []).append(time.perf_counter() - t0)
        return out

    def on_epoch_end(self) -> None:
        steps = self.step_seconds.get(self.current_epoch)
        if steps:
            self.print_to_log_file(f"Train step: {statistics.median(steps):.3f} s/iteration "
                                   f"(median of {len(steps)})")
        super().on_epoch_end()

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.local_rank == 0 and self.step_seconds:
            write_step_times(self.output_folder, self.step_seconds, str(self.device))


def write_step_times(folder: str | os.PathLike, step_seconds: dict[int, list[float]], device: str) -> dict:
    """Write :data:`TIMING_FILE`: seconds of every train step by epoch, and the median over epochs
    after the first (all steps but the very first when only one epoch ran). Returns the record."""
    epochs = sorted(step_seconds)
    later = [t for e in epochs[1:] for t in step_seconds[e]] or step_seconds[epochs[0]][1:] \
        or step_seconds[epochs[0]]
    record = {"device": device, "median_s_per_iteration": statistics.median(later),
              "num_timed_iterations": len(later),
              "seconds_by_epoch": {str(e): step_seconds[e] for e in epochs}}
    write_json(record, os.path.join(folder, TIMING_FILE))
    return record


def read_step_times(fold_folder: str | os.PathLike) -> dict | None:
    """The record :func:`write_step_times` left in a fold folder, or None."""
    path = os.path.join(fold_folder, TIMING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
