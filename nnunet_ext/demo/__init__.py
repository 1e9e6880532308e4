"""The demo: nnU-Net's whole workflow, with stock commands, on a dataset derived at run time.

- :mod:`.dataset`: the demo dataset, derived from the MNI152 templates inside nilearn.
- :mod:`.workflow`: the steps (plan, train the short-run variants, select, predict, evaluate) and
  what a re-run reuses.
- :mod:`.report`: the test cases' metrics and overlays, and the table that compares trainers.

It runs nnU-Net's commands in subprocesses and imports trainers, architectures and evaluation,
never the CLI (``nnunet-ext demo`` is a thin caller). Nothing is imported here.
"""
