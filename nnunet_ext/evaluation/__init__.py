"""Evaluation and benchmarking (imports architectures at most; never trainers or the CLI).

- :mod:`.metrics`: Dice / HD95 / NSD of one case, with the empty-mask conventions.
- :mod:`.folder`: a prediction folder against a reference folder; JSON and CSV output.
- :mod:`.benchmark`: every registered network next to nnU-Net's default U-Net on one plan.

Nothing is imported here, so ``import nnunet_ext.evaluation`` stays cheap.
"""
