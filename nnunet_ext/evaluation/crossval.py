"""Per-case metrics of trainers' cross-validation, read from what nnU-Net wrote.

For each trainer and fold, nnU-Net's validation exports the fold's held-out cases to
``<nnUNet_results>/<Dataset>/<Trainer>__<Plans>__<configuration>/fold_<f>/validation/`` under the
reference's file name; the references are ``<nnUNet_preprocessed>/<Dataset>/gt_segmentations/``,
the classes (labels or regions) and the file ending come from the preprocessed ``dataset.json``.
Every case of the folds asked for is scored once (pooled over folds) with :mod:`.metrics`, in the
worker pool of :mod:`.folder`.

Cache: the scores of a fold are kept beside its predictions in :data:`CACHE_NAME`, per case with
the size and modification time of prediction and reference; an entry whose files changed, or a
cache made with another NSD tolerance or other classes, is scored again. :func:`collect` only reads;
it returns the caches to write, and :func:`write_caches` writes them (after every check passed).

Every problem is an :class:`~.cases.EvaluationError` whose one-line message names the trainer,
fold or case and the command that fixes it, raised before anything is scored or written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnunet_ext.evaluation import labels as _labels
from nnunet_ext.evaluation.cases import EvaluationError, check_geometry
from nnunet_ext.io import write_json

CACHE_NAME = "nnunet_ext_metrics.json"
CACHE_SCHEMA = "nnunet-ext/crossval-metrics/1"


@dataclass
class Layout:
    """Where one dataset's cross-validation lives."""
    dataset: str                 # DatasetXXX_Name
    results: Path                # <nnUNet_results>/<Dataset>
    preprocessed: Path           # <nnUNet_preprocessed>/<Dataset>
    configuration: str
    plans: str

    def trainer_dir(self, trainer: str) -> Path:
        return self.results / f"{trainer}__{self.plans}__{self.configuration}"

    def train_command(self, trainer: str, fold: int, *more: str) -> str:
        plans = "" if self.plans == "nnUNetPlans" else f" -p {self.plans}"
        return " ".join([f"nnUNetv2_train {self.dataset} {self.configuration} {fold} -tr {trainer}{plans}", *more])


@dataclass
class CrossValidation:
    """Scores of every trainer: ``scores[trainer][case] = {key: {"dice", "hd95", "nsd", ...}}``."""
    layout: Layout
    classes: dict[str, str]                      # key ("1", "(1, 2)") -> name
    tolerance_mm: float
    folds: list[int]
    cases: list[str]                             # sorted, the same for every trainer
    fold_of: dict[str, dict[str, int]]           # trainer -> case -> fold
    scores: dict[str, dict[str, dict]]
    n_scored: int = 0                            # cases scored now (the rest came from caches)
    caches: list[tuple[Path, dict]] = field(default_factory=list, repr=False)


def _env_dir(var: str, given: str | os.PathLike | None) -> Path:
    value = given if given is not None else os.environ.get(var)
    if not value:
        raise EvaluationError(f"{var} is not set; export it (as for nnUNetv2_train) to the folder nnU-Net uses")
    path = Path(value)
    if not path.is_dir():
        raise EvaluationError(f"{var} '{path}' is not a folder; point it at nnU-Net's {var.split('_')[1]} folder")
    return path


def dataset_name(dataset: str | int, *roots: Path) -> str:
    """``DatasetXXX_Name`` of a dataset given by name or id, looked up in ``roots`` as nnU-Net's
    ``maybe_convert_to_dataset_name`` does in the folders of its environment variables."""
    text = str(dataset)
    if text.startswith("Dataset"):
        return text
    try:
        prefix = f"Dataset{int(text):03d}_"
    except ValueError:
        raise EvaluationError(f"dataset '{text}' is neither an id (e.g. 1) nor a name (e.g. Dataset001_Name)") from None
    found = sorted({p.name for r in roots for p in r.glob(prefix + "*") if p.is_dir()})
    if len(found) != 1:
        where = " and ".join(f"'{r}'" for r in roots)
        what = "no folder" if not found else f"{len(found)} folders ({', '.join(found)})"
        raise EvaluationError(f"dataset {text}: {what} named {prefix}* in {where}; give the dataset's full name "
                              f"(e.g. -d Dataset{int(text):03d}_Name)")
    return found[0]


def layout(dataset: str | int, configuration: str, plans: str = "nnUNetPlans",
           results_dir: str | os.PathLike | None = None,
           preprocessed_dir: str | os.PathLike | None = None) -> Layout:
    """The folders of ``dataset`` (``results_dir`` / ``preprocessed_dir`` default to nnU-Net's
    environment variables ``nnUNet_results`` / ``nnUNet_preprocessed``)."""
    results, pre = _env_dir("nnUNet_results", results_dir), _env_dir("nnUNet_preprocessed", preprocessed_dir)
    name = dataset_name(dataset, pre, results)
    return Layout(name, results / name, pre / name, configuration, plans)


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _read_cache(path: Path, tolerance_mm: float, keys: list[str]) -> dict:
    """The cached cases of a fold (``{}`` if there is no usable cache)."""
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if (not isinstance(cache, dict) or cache.get("schema") != CACHE_SCHEMA or cache.get("tolerance_mm") != tolerance_mm
            or cache.get("classes") != keys or not isinstance(cache.get("cases"), dict)):
        return {}
    return cache["cases"]


def _shown(names) -> str:
    """Up to five names, quoted, and how many more (``none`` if empty)."""
    names = sorted(names)
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(f"'{n}'" for n in names[:5]) + more if names else "none"


def _validation_cases(lay: Layout, trainer: str, fold: int, file_ending: str,
                      split: list[str] | None) -> dict[str, Path]:
    """``{case: prediction}`` of one fold; one line naming trainer, fold and the fixing command if
    the fold has no (complete) validation."""
    tdir = lay.trainer_dir(trainer)
    if not tdir.is_dir():
        raise EvaluationError(f"trainer {trainer}: no results '{tdir}'; train it: {lay.train_command(trainer, fold)}"
                              f" (for each fold), or check -tr / -p / -c")
    fdir = tdir / f"fold_{fold}"
    vdir = fdir / "validation"
    preds = {p.name[:-len(file_ending)]: p for p in sorted(vdir.glob(f"*{file_ending}"))} if vdir.is_dir() else {}
    if not preds:
        trained = (fdir / "checkpoint_final.pth").is_file()
        why = "has no validation predictions" + ("" if vdir.is_dir() else f" ('{vdir}' missing)")
        fix = (f"run its validation: {lay.train_command(trainer, fold, '--val')}" if trained else
               f"its training is unfinished (no checkpoint_final.pth); finish it: {lay.train_command(trainer, fold)}"
               f" (add --c to continue)")
        raise EvaluationError(f"trainer {trainer} fold {fold} {why}; {fix}")
    if split is not None:
        missing = [c for c in split if c not in preds]
        if missing:
            raise EvaluationError(f"trainer {trainer} fold {fold}: validation lacks {len(missing)} of the fold's "
                                  f"{len(split)} cases ({_shown(missing)}); let a running validation finish, or run it again: "
                                  f"{lay.train_command(trainer, fold, '--val')}")
        preds = {c: p for c, p in preds.items() if c in set(split)}
    return preds


def _splits(lay: Layout) -> list[dict] | None:
    try:
        return json.loads((lay.preprocessed / "splits_final.json").read_text())
    except (OSError, ValueError):
        return None


def collect(lay: Layout, trainers: Sequence[str], folds: Sequence[int], tolerance_mm: float = 1.0,
            num_processes: int | None = None, progress: bool = True) -> CrossValidation:
    """Score (or read from the caches) every validation case of ``trainers`` in ``folds``.

    Raises:
        EvaluationError: a trainer or fold without (complete) validation, case sets that differ
            between trainers, a case validated in two folds, a prediction without reference, a
            grid mismatch or a bad label (see :mod:`.labels`); nothing is written.
    """
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key

    from nnunet_ext.evaluation.folder import evaluate_case, Runner, default_num_processes

    ds_json = lay.preprocessed / "dataset.json"
    gt_dir = lay.preprocessed / "gt_segmentations"
    if not ds_json.is_file() or not gt_dir.is_dir():
        raise EvaluationError(f"'{lay.preprocessed}' has no dataset.json / gt_segmentations; preprocess the dataset: "
                              f"nnUNetv2_plan_and_preprocess -d {lay.dataset}")
    file_ending = json.loads(ds_json.read_text()).get("file_ending", ".nii.gz")
    classes, names, ignore_label = _labels.labels_from_dataset_json(ds_json)
    classes = _labels.check_classes(classes, ignore_label)
    keys = [label_or_region_to_key(c) for c in classes]
    known = frozenset({0} | _labels.members(classes) | ({ignore_label} if ignore_label is not None else set()))
    splits = _splits(lay)

    # every fold's predictions and the reference of each case, checked before anything is scored
    preds: dict[str, dict[int, dict[str, Path]]] = {}
    fold_of: dict[str, dict[str, int]] = {}
    for t in trainers:
        preds[t], fold_of[t] = {}, {}
        for f in folds:
            split = splits[f]["val"] if splits is not None and f < len(splits) else None
            preds[t][f] = _validation_cases(lay, t, f, file_ending, split)
            for c in preds[t][f]:
                if c in fold_of[t]:
                    raise EvaluationError(f"trainer {t}: case '{c}' was validated in folds {fold_of[t][c]} "
                                          f"and {f}; every case must be held out once (check splits_final.json)")
                fold_of[t][c] = f
    first = trainers[0]
    for t in trainers[1:]:
        a, b = set(fold_of[first]), set(fold_of[t])
        if a != b:
            raise EvaluationError(f"trainers {first} and {t} validated different cases in folds "
                                  f"{' '.join(map(str, folds))} (only {first}: {_shown(a - b)}; only {t}: "
                                  f"{_shown(b - a)}); compare trainers trained on the same splits (splits_final.json)")
    cases = sorted(fold_of[first])
    refs = {c: gt_dir / f"{c}{file_ending}" for c in cases}
    missing = [c for c in cases if not refs[c].is_file()]
    if missing:
        raise EvaluationError(f"'{gt_dir}' has no reference for case '{missing[0]}' ({len(missing)} missing); "
                              f"preprocess the dataset again: nnUNetv2_plan_and_preprocess -d {lay.dataset}")
    for t in trainers:
        for f in folds:
            for c, p in preds[t][f].items():
                try:
                    check_geometry(c, refs[c], p)
                except EvaluationError as e:
                    raise EvaluationError(f"trainer {t} fold {f}: {e}") from None

    # cached scores where the files are unchanged; the rest is scored in one pool
    scores: dict[str, dict[str, dict]] = {t: {} for t in trainers}
    stamps, cached, jobs, owners = {}, {}, [], []
    for t in trainers:
        for f in folds:
            vdir = lay.trainer_dir(t) / f"fold_{f}" / "validation"
            cached[(t, f)] = _read_cache(vdir / CACHE_NAME, float(tolerance_mm), keys)
            for c, p in preds[t][f].items():
                stamp = {"prediction": _file_stamp(p), "reference": _file_stamp(refs[c])}
                stamps[(t, c)] = stamp
                entry = cached[(t, f)].get(c)
                if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) \
                        and set(entry.get("metrics", {})) == set(keys):
                    scores[t][c] = entry["metrics"]
                else:
                    jobs.append((c, refs[c], p, classes, float(tolerance_mm), ignore_label, known, str(ds_json)))
                    owners.append(t)
    if jobs:
        nproc = default_num_processes() if num_processes is None else max(1, int(num_processes))
        with Runner(min(nproc, len(jobs)), progress) as runner:
            for t, r in zip(owners, runner.map(evaluate_case, jobs, "score")):
                scores[t][r["case"]] = r["metrics"]

    caches = []
    for t in trainers:
        for f in folds:
            vdir = lay.trainer_dir(t) / f"fold_{f}" / "validation"
            entries = {c: {**stamps[(t, c)], "metrics": scores[t][c]} for c in preds[t][f]}
            if entries != cached[(t, f)]:
                caches.append((vdir / CACHE_NAME, {"schema": CACHE_SCHEMA, "tolerance_mm": float(tolerance_mm),
                                                   "classes": keys, "cases": entries}))
    return CrossValidation(lay, {k: names.get(c, k) for k, c in zip(keys, classes)}, float(tolerance_mm),
                           list(folds), cases, fold_of, scores, len(jobs), caches)


def write_caches(cv: CrossValidation) -> None:
    """Write the caches :func:`collect` made (each file whole or not at all)."""
    for path, cache in cv.caches:
        write_json(cache, path)
