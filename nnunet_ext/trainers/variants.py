"""Short-run trainer variants, created on demand from their name.

nnU-Net ships ``nnUNetTrainer_5epochs`` and friends; we generalise the pattern so that any of
our trainers (and stock ``nnUNetTrainer``) has them without a class per combination:

- ``<Trainer>_<E>epochs`` (or ``_1epoch``): ``num_epochs = E``, nnU-Net's 250 iterations per epoch;
- ``<Trainer>_<E>epochs_<I>iters``: also ``num_iterations_per_epoch = I`` and
  ``num_val_iterations_per_epoch = max(1, I // 5)`` (nnU-Net's 250:50 ratio).

The module ``__getattr__`` of :mod:`nnunet_ext.trainers` calls :func:`make_variant`, so the names
resolve through nnU-Net's trainer search (``hasattr(module, name)``), in training and inference.
A variant also mixes in :class:`~nnunet_ext.trainers.timing.StepTimingMixin`, so short runs report
their seconds per iteration (``nnunet-ext demo`` compares trainers with them).
"""

from __future__ import annotations

import re

import torch

from nnunet_ext.trainers.timing import StepTimingMixin

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
    """A subclass of ``base`` named ``name`` that trains ``epochs`` x ``iters`` iterations, its train
    steps timed by :class:`~nnunet_ext.trainers.timing.StepTimingMixin`."""

    # nnU-Net records __init__'s named parameters for checkpoints, so keep its exact signature
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        if iters is not None:
            self.num_iterations_per_epoch = iters
            self.num_val_iterations_per_epoch = max(1, iters // 5)

    doc = f"{base.__name__} for {epochs} epoch(s)" + (f" of {iters} iterations" if iters else "") + "."
    cls = type(name, (StepTimingMixin, base), {"__init__": __init__, "__doc__": doc, "__module__": module})
    cls.__qualname__ = name
    return cls
