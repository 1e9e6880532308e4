"""Measuring: sizes, times and memory of the scans and the networks.

It sits beside the layers it measures: it may import :mod:`nnunet_ext.ops`, :mod:`nnunet_ext.blocks`,
:mod:`nnunet_ext.architectures` and :mod:`nnunet_ext.trainers` (every training step it times is the
trainer's own, :mod:`nnunet_ext.trainers.step`), the CLI imports it, and none of those imports it.

- :mod:`.counts`: parameters and MACs of a network (``nnunet-ext summary``).
- :mod:`.gpu_check`: the first-GPU check (``nnunet-ext gpu-check``): scan back-ends against the
  reference, each network's AMP training step, memory and stability, the back-end ``auto`` picks.
- :mod:`.harness`: how every time is taken (``torch.utils.benchmark.Timer``) and how each
  measurement runs in a fresh interpreter.
- :mod:`.memory`: peak memory of this process (CUDA allocator, or peak resident set on CPU).
- :mod:`.networks`: every registered paper network beside nnU-Net's default U-Net on one plan
  (``nnunet-ext benchmark``); :mod:`.prediction` whole-volume prediction, :mod:`.memory_check` the
  memory estimate beside measured training steps.
- :mod:`.scan`: the selective-scan back-ends beside mambapy and the reference
  (``nnunet-ext benchmark-scan``).

Nothing is imported here, so ``import nnunet_ext.bench`` stays cheap and the workers start clean.
"""
