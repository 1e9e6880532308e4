"""Short-run trainer variants, created on demand from their name.

nnU-Net ships ``nnUNetTrainer_5epochs`` and friends; we generalise the pattern so that any of
our trainers (and stock ``nnUNetTrainer``) has them without a class per combination:

- ``<Trainer>_<E>epochs`` (or ``_1epoch``): ``num_epochs = E``, nnU-Net's 250 iterations per epoch;
- ``<Trainer>_<E>epochs_<I>iters``: also ``num_iterations_per_epoch = I`` and
  ``num_val_iterations_per_epoch = max(1, I // 5)`` (nnU-Net's 250:50 ratio).

The module ``__getattr__`` of :mod:`nnunet_ext.trainers` calls :func:`make_variant`, so the names
resolve through nnU-Net's trainer search (``hasattr(module, name)``), in training and inference.

A variant also times nnU-Net's ``train_step`` (forward, backward and optimizer step of one batch;
data loading excluded): each epoch's median goes to the training log, and at the end of training
``train_step_seconds.json`` in the fold folder holds every step's seconds and the median after the
first epoch (warm-up excluded). ``nnunet-ext demo`` compares trainers with it.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time

import torch

#: written by a variant into its fold folder at the end of training
TIMING_FILE = "train_step_seconds.json"

VARIANT_RE = re.compile(r"^(?P<base>[A-Za-z][A-Za-z0-9]*?)_(?P<epochs>\d+)epochs?(?:_(?P<iters>\d+)iters)?$")


def parse_variant(name: str) -> tuple[str, int, int | None] | None:
    """``'X_5epochs_20iters' -> ('X', 5, 20)``; ``None`` if the name is not a variant name."""
    m = VARIANT_RE.match(name)
    if not m:
        return None
    epochs = int(m["epochs"])
    iters = int(m["iters"]) if m["iters"] else None
    if epochs < 1 or (iters is not None and iters < 1):
        return None
    return m["base"], epochs, iters


def variant_name(base: str, epochs: int, iters: int | None = None) -> str:
    """``('X', 1, 2) -> 'X_1epoch_2iters'``, ``('X', 5) -> 'X_5epochs'`` (nnU-Net's spelling)."""
    name = f"{base}_{epochs}epoch" + ("" if epochs == 1 else "s")
    return name + (f"_{iters}iters" if iters is not None else "")


def make_variant(base: type, name: str, epochs: int, iters: int | None, module: str) -> type:
    """A subclass of ``base`` named ``name`` that trains ``epochs`` x ``iters`` iterations."""

    # nnU-Net records __init__'s named parameters for checkpoints, so keep its exact signature
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self._step_seconds: dict[int, list[float]] = {}  # epoch -> seconds of each train_step
        self.num_epochs = epochs
        if iters is not None:
            self.num_iterations_per_epoch = iters
            self.num_val_iterations_per_epoch = max(1, iters // 5)

    def train_step(self, batch: dict) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = base.train_step(self, batch)  # returns the loss on the CPU, so the GPU work is done
        self._step_seconds.setdefault(self.current_epoch, []).append(time.perf_counter() - t0)
        return out

    def on_epoch_end(self) -> None:
        steps = self._step_seconds.get(self.current_epoch)
        if steps:
            self.print_to_log_file(f"Train step: {statistics.median(steps):.3f} s/iteration "
                                   f"(median of {len(steps)})")
        base.on_epoch_end(self)

    def on_train_end(self) -> None:
        base.on_train_end(self)
        if self.local_rank == 0 and self._step_seconds:
            write_step_times(self.output_folder, self._step_seconds, str(self.device))

    doc = f"{base.__name__} for {epochs} epoch(s)" + (f" of {iters} iterations" if iters else "") + "."
    cls = type(name, (base,), {"__init__": __init__, "train_step": train_step, "on_epoch_end": on_epoch_end,
                               "on_train_end": on_train_end, "__doc__": doc, "__module__": module})
    cls.__qualname__ = name
    return cls


def write_step_times(folder: str | os.PathLike, step_seconds: dict[int, list[float]], device: str) -> dict:
    """Write :data:`TIMING_FILE`: seconds of every train step by epoch, and the median over epochs
    after the first (all steps but the very first when only one epoch ran). Returns the record."""
    epochs = sorted(step_seconds)
    later = [t for e in epochs[1:] for t in step_seconds[e]] or step_seconds[epochs[0]][1:] \
        or step_seconds[epochs[0]]
    record = {"device": device, "median_s_per_iteration": statistics.median(later),
              "num_timed_iterations": len(later),
              "seconds_by_epoch": {str(e): step_seconds[e] for e in epochs}}
    with open(os.path.join(folder, TIMING_FILE), "w") as f:
        json.dump(record, f, indent=1)
    return record


def read_step_times(fold_folder: str | os.PathLike) -> dict | None:
    """The record :func:`write_step_times` left in a fold folder, or None."""
    path = os.path.join(fold_folder, TIMING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
