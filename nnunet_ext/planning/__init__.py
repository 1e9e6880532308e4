"""Memory-aware nnU-Net plans per network (``nnunet-ext plan``).

- :mod:`.estimate`: peak training memory of a trainer's network at a candidate plan, without a GPU
  (fake tensors, float16 autocast as on CUDA).
- :mod:`.planner`: nnU-Net's ``ExperimentPlanner`` with that estimate (patch and batch size).
- :mod:`.dataset`: checks, planning of a dataset for trainers and targets, writing, next steps.
- :mod:`.example`: the README's worked example on a fabricated BraTS-like fingerprint.

May import ``architectures`` and ``trainers``; the CLI and ``bench`` import it.
"""
