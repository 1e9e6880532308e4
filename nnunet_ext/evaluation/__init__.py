"""Evaluation of segmentations.

Scoring imports nothing of ours but :mod:`nnunet_ext.io` (and never trainers, the demo or the CLI):

- :mod:`.metrics`: Dice / HD95 / NSD of one case, with the empty-mask conventions.
- :mod:`.cases`: references and predictions paired by file name, each pair's grid checked.
- :mod:`.labels`: which classes are scored and which labels a label map may hold.
- :mod:`.folder`: a prediction folder against a reference folder, case by case in a worker pool;
  the result's schema.
- :mod:`.report`: the result as JSON and CSV files and as a markdown table.
- :mod:`.overlay`: PNG mid-slices of image, reference and prediction.
- :mod:`.crossval`: every trainer's cross-validation predictions (``fold_<f>/validation``) scored
  against ``gt_segmentations``, cached beside the predictions.
- :mod:`.statistics`: paired tests, bootstrap intervals, Holm, ranking, Friedman and Nemenyi.
- :mod:`.compare`, :mod:`.compare_plots`: ``nnunet-ext compare``'s tables, files and pictures.

Nothing is imported here, so ``import nnunet_ext.evaluation`` stays cheap.
"""
