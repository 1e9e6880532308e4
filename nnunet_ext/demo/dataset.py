"""The embedded demo dataset: synthetic brain MRI derived from the MNI ICBM152 2009a templates.

No labelled multi-subject 3D dataset can be downloaded at run time, so the demo *derives* one from
the MNI ICBM152 2009a symmetric templates that ship inside the installed ``nilearn`` package
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``). They are
read in place with :mod:`importlib.resources`; nothing is copied into this repository.

Recipe, per case (each case has its own random stream derived from ``(seed, case index)``):

* labels: 0 background, 1 grey matter, 2 white matter. The GM/WM probability maps are smoothed to
  the target resolution (anti-aliasing), a voxel is tissue where ``p_gm + p_wm >= 0.5`` inside the
  brain mask, and the tissue class is the larger of the two (argmax with a threshold);
* geometry: a random affine (rotation within +-15 degrees about each axis, per-axis scale 0.9-1.1,
  shift within +-8 mm) plus a smooth elastic displacement field (cubic interpolation of random
  control-point displacements), applied to the T1 image with linear and to the label map with
  nearest-neighbour interpolation, sampled directly on an isotropic grid of ``spacing_mm``;
* intensity: a smooth multiplicative bias field, a gamma change and Gaussian noise; the image stays
  brain-extracted (zero outside the brain), like the template it comes from;
* the volume is cropped to the brain's bounding box plus a two-voxel margin.

The result is written in nnU-Net raw format into ``raw_root/DatasetXXX_Name/`` with a held-out
labelled test split (``imagesTs`` + ``labelsTs``; nnU-Net does not read ``labelsTs``, the demo uses
it for evaluation). The dataset is first written into a hidden temporary folder next to the target
and renamed into place, so a failure never leaves a half-written dataset behind.

Same seed and settings give byte-identical arrays.

Credits: MNI ICBM152 2009a templates, Copyright (C) 1993-2009 Louis Collins, McConnell Brain
Imaging Centre, Montreal Neurological Institute, McGill University (permissive notice, see
:data:`TEMPLATE_LICENCE`); read from nilearn (BSD-3-Clause).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_ext.io import write_json

#: Default nnU-Net dataset id of the demo dataset (chosen high to avoid clashing with users' ids).
DEMO_DATASET_ID = 987
#: Default dataset name; the folder is ``Dataset987_NNExtDemo``.
DEMO_DATASET_NAME = "NNExtDemo"
#: Label map declared in dataset.json.
DEMO_LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}
#: Bump when the recipe changes so that old folders are not silently reused.
GENERATOR_VERSION = 1
#: Default voxel size in mm (isotropic): coarse, so that small cases train quickly on a CPU.
DEMO_SPACING_MM = 4.0
#: Voxel sizes in mm the recipe accepts: from the templates' own 1 mm to a coarse 10 mm.
SPACING_RANGE_MM = (1.0, 10.0)

#: Template files inside the installed nilearn package (``nilearn/datasets/data/``).
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

TEMPLATE_REFERENCE = (
    "MNI ICBM152 non-linear symmetric 2009a templates (T1, grey- and white-matter probability maps), "
    "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. "
    "VS Fonov, AC Evans, RC McKinstry, CR Almli, DL Collins: Unbiased nonlinear average age-appropriate "
    "brain templates from birth to adulthood, NeuroImage 47 (2009) S102. "
    "VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins: Unbiased average age-appropriate "
    "atlases for pediatric studies, NeuroImage 54(1) (2011) 313-327. "
    "DL Collins, AP Zijdenbos, WFC Baare, AC Evans: ANIMAL+INSECT: Improved Cortical Structure "
    "Segmentation, IPMI 1999. "
    "Read from the copy shipped in the nilearn package (nilearn/datasets/data/)."
)

TEMPLATE_LICENCE = (
    "Templates: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and distribute this "
    "software and its documentation for any purpose and without fee is hereby granted, provided that the "
    "above copyright notice appear in all copies. The authors and McGill University make no "
    "representations about the suitability of this software for any purpose. It is provided 'as is' "
    "without express or implied warranty. "
    "Distributed with nilearn (BSD-3-Clause licence, Copyright the nilearn developers). "
    "The synthetic cases derived here by nnunet-ext carry the same notices."
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_IMAGE_SUFFIX = "_0000.nii.gz"
_FILE_ENDING = ".nii.gz"


# --------------------------------------------------------------------------------------------------
# finding / checking an existing dataset
# --------------------------------------------------------------------------------------------------
def demo_dataset_path(raw_root: str | os.PathLike, dataset_id: int = DEMO_DATASET_ID,
                      name: str = DEMO_DATASET_NAME) -> Path:
    """The folder ``raw_root/Dataset{id:03d}_{name}`` (whether or not it exists)."""
    _check_id_and_name(dataset_id, name)
    return Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"


def _case_ids(num_train: int, num_test: int) -> tuple[list[str], list[str]]:
    ids = [f"case_{i:03d}" for i in range(num_train + num_test)]
    return ids[:num_train], ids[num_train:]


#: the settings a demo dataset is built with; two datasets with equal settings are identical
SETTING_KEYS = ("generator_version", "seed", "spacing_mm", "num_train", "num_test")


def demo_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings ``folder/dataset.json`` records as a demo dataset's (the generator record),
    or None when it has none. Completeness is not checked (see :func:`find_demo_dataset`).

    nnU-Net copies ``dataset.json`` into the preprocessed folder and every trained model's folder,
    so this also tells which demo dataset those were made from.
    """
    try:
        dataset_json = json.loads((Path(folder) / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    record = dataset_json.get("nnunet_ext_demo") if isinstance(dataset_json, dict) else None
    return record if isinstance(record, dict) else None


def same_settings(record: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Whether a generator record has the :data:`SETTING_KEYS` of ``wanted``."""
    return record is not None and all(record.get(k) == wanted[k] for k in SETTING_KEYS)


def demo_settings(num_train: int = 12, num_test: int = 2, spacing_mm: float = DEMO_SPACING_MM,
                  seed: int = 0) -> dict[str, Any]:
    """The generator record :func:`build_demo_dataset` writes for these arguments (after checking them)."""
    _validate(num_train, num_test, spacing_mm, seed)
    return _dataset_json(DEMO_DATASET_NAME, int(num_train), int(num_test), float(spacing_mm),
                         int(seed))["nnunet_ext_demo"]


def _read_demo_record(folder: Path) -> dict[str, Any] | None:
    """The generator record stored in dataset.json, or None if ``folder`` is not a complete demo dataset."""
    record = demo_record(folder)
    if record is None:
        return None
    dataset_json = json.loads((folder / "dataset.json").read_text())
    try:
        num_train, num_test = int(record["num_train"]), int(record["num_test"])
    except (KeyError, TypeError, ValueError):
        return None
    if dataset_json.get("numTraining") != num_train or dataset_json.get("labels") != DEMO_LABELS:
        return None
    train, test = _case_ids(num_train, num_test)
    expected = ([folder / "imagesTr" / (c + _IMAGE_SUFFIX) for c in train]
                + [folder / "labelsTr" / (c + _FILE_ENDING) for c in train]
                + [folder / "imagesTs" / (c + _IMAGE_SUFFIX) for c in test]
                + [folder / "labelsTs" / (c + _FILE_ENDING) for c in test])
    if not all(p.is_file() for p in expected):
        return None
    return record


def find_demo_dataset(raw_root: str | os.PathLike, dataset_id: int = DEMO_DATASET_ID,
                      name: str = DEMO_DATASET_NAME) -> Path | None:
    """Return the demo dataset folder if it already exists *complete* under ``raw_root``, else None.

    Complete means: ``dataset.json`` written by this module and every image and label it promises
    (training and held-out test cases) present. Use it to reuse a dataset on re-runs.
    """
    folder = demo_dataset_path(raw_root, dataset_id, name)
    return folder if folder.is_dir() and _read_demo_record(folder) is not None else None


def _check_id_and_name(dataset_id: int, name: str) -> None:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be an integer from 1 to 999 (nnU-Net's DatasetXXX), got {dataset_id!r}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"dataset name must be letters, digits, '_' or '-' (e.g. {DEMO_DATASET_NAME!r}), "
                         f"got {name!r}")


# --------------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------------
def _template_arrays() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read the T1/GM/WM templates from the installed nilearn package: (uint8 arrays, affine)."""
    try:
        from importlib.resources import as_file, files

        data_dir = files("nilearn").joinpath("datasets", "data")
        import nibabel
    except ModuleNotFoundError as e:
        raise ImportError("The demo dataset is derived from the MNI152 templates shipped inside nilearn, which "
                          f"is not installed ({e}). Install it with: pip install nilearn") from e
    arrays, affine = {}, None
    for key, fname in TEMPLATE_FILES.items():
        resource = data_dir.joinpath(fname)
        if not resource.is_file():
            raise FileNotFoundError(f"{fname} is missing from the installed nilearn package; reinstall it with: "
                                    "pip install --force-reinstall 'nilearn>=0.10'")
        with as_file(resource) as path:
            img = nibabel.load(str(path))
            arrays[key] = np.asarray(img.dataobj)
            if affine is None:
                affine = np.asarray(img.affine, dtype=np.float64)
            elif not np.allclose(affine, img.affine):
                raise RuntimeError("nilearn's MNI152 templates do not share one grid; unexpected nilearn version "
                                   "(tested with 0.10-0.14): pip install 'nilearn>=0.10,<0.15'")
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError("nilearn's MNI152 templates are not on an axis-aligned 1 mm RAS grid as expected; "
                           "unexpected nilearn version (tested with 0.10-0.14): pip install 'nilearn>=0.10,<0.15'")
    return arrays, affine


class _Templates:
    """Templates prepared for one output spacing: smoothed T1, label map, brain mask, grid origin."""

    def __init__(self, spacing_mm: float):
        from scipy import ndimage

        arrays, affine = _template_arrays()
        t1 = arrays["t1"]
        brain = t1 > 0
        lo = np.maximum(np.argwhere(brain).min(0) - 4, 0)
        hi = np.minimum(np.argwhere(brain).max(0) + 5, brain.shape)
        crop = tuple(slice(a, b) for a, b in zip(lo, hi))
        # anti-aliasing for the coarse target grid (sigma in 1 mm voxels)
        sigma = max(0.0, (float(spacing_mm) - 1.0) / 2.0)

        def smooth(a: np.ndarray, scale: float) -> np.ndarray:
            a = a[crop].astype(np.float32) * np.float32(scale)
            return ndimage.gaussian_filter(a, sigma, mode="constant") if sigma > 0 else a

        self.t1 = smooth(t1, 1.0 / 255.0)
        gm, wm = smooth(arrays["gm"], 1.0 / 255.0), smooth(arrays["wm"], 1.0 / 255.0)
        self.brain = brain[crop].astype(np.float32)
        tissue = (gm + wm >= 0.5) & (self.brain > 0)
        self.label = np.where(tissue, np.where(wm > gm, 2, 1), 0).astype(np.uint8)
        # world (RAS mm) coordinates of voxel (0, 0, 0) of the cropped arrays; voxels are 1 mm
        self.origin = affine[:3, 3] + lo.astype(np.float64)
        self.center = self.origin + np.argwhere(self.brain > 0).mean(0)
        self.extent = np.asarray(self.t1.shape, dtype=np.float64) - 1.0


# --------------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------------
def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    a, b, c = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(shape: tuple[int, ...], spacing_mm: float, control_mm: float, std: float,
                  rng: np.random.Generator, components: int) -> np.ndarray:
    """Random smooth field(s) on ``shape``: cubic interpolation of N(0, std) values on a coarse control grid.

    Cubic B-spline interpolation on a tensor grid is separable, so it is done as one small
    interpolation matrix per axis (identical to ``map_coordinates(order=3)`` on the full grid, far cheaper).
    """
    from scipy import ndimage

    coarse = tuple(max(2, int(np.ceil(s * spacing_mm / control_mm)) + 1) for s in shape)
    values = rng.normal(0.0, std, size=(components, *coarse))
    mats = []
    for c, s in zip(coarse, shape):
        x = np.linspace(0.0, c - 1.0, s)[None]
        mats.append(np.stack([ndimage.map_coordinates(e, x, order=3, mode="nearest") for e in np.eye(c)], 1))
    return np.einsum("ia,jb,kc,nabc->nijk", *mats, values, optimize=True)


def make_demo_case(templates: _Templates, spacing_mm: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one case on an isotropic ``spacing_mm`` grid.

    Returns ``(image int16, label uint8, origin)``; arrays are indexed (i, j, k) along the RAS axes
    (x right, y anterior, z superior) and ``origin`` is the RAS world position (mm) of voxel (0, 0, 0).
    """
    from scipy import ndimage

    # random affine about the brain centre: y = c + shift + A (x - c), x in template space
    angles = np.deg2rad(rng.uniform(-15.0, 15.0, 3))
    scales = rng.uniform(0.9, 1.1, 3)
    shift = rng.uniform(-8.0, 8.0, 3)
    forward = _rotation(angles) @ np.diag(scales)
    inverse = np.linalg.inv(forward)
    c = templates.center

    # output grid: forward image of the template box plus room for the elastic field
    corners = templates.origin + np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * templates.extent
    mapped = c + shift + (corners - c) @ forward.T
    margin = 12.0 + 2.0 * spacing_mm
    lo = mapped.min(0) - margin
    shape = tuple(int(n) for n in np.ceil((mapped.max(0) + margin - lo) / spacing_mm) + 1)

    # smooth elastic displacement (mm), control points every 32 mm
    displacement = _smooth_field(shape, spacing_mm, control_mm=32.0, std=2.0, rng=rng, components=3)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    world = lo[:, None, None, None] + spacing_mm * idx                                      # y
    source = c[:, None, None, None] + np.einsum("ab,b...->a...", inverse, world - (c + shift)[:, None, None, None])
    voxel = source + displacement - templates.origin[:, None, None, None]                  # template voxels
    del idx, world, source, displacement

    brain = ndimage.map_coordinates(templates.brain, voxel, order=1, mode="constant", cval=0.0) >= 0.5
    t1 = ndimage.map_coordinates(templates.t1, voxel, order=1, mode="constant", cval=0.0)
    label = ndimage.map_coordinates(templates.label, voxel, order=0, mode="constant", cval=0)
    label[~brain] = 0
    del voxel

    # crop to the brain bounding box + 2 voxels
    where = np.argwhere(brain)
    a = np.maximum(where.min(0) - 2, 0)
    b = np.minimum(where.max(0) + 3, shape)
    box = tuple(slice(i, j) for i, j in zip(a, b))
    brain, t1, label = brain[box], t1[box].astype(np.float64), label[box]
    origin = lo + spacing_mm * a

    # intensity: multiplicative bias field, gamma, Gaussian noise; zero outside the brain
    bias = np.exp(_smooth_field(brain.shape, spacing_mm, control_mm=64.0, std=0.12, rng=rng, components=1)[0])
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    noise_std = float(rng.uniform(0.01, 0.04))
    image = np.clip(t1 * bias, 0.0, None) ** gamma
    image = image + rng.normal(0.0, noise_std, size=image.shape)
    image = np.where(brain, np.clip(image, 0.0, None), 0.0)
    image = np.rint(np.clip(image * 1000.0, 0, 32767)).astype(np.int16)
    return np.ascontiguousarray(image), np.ascontiguousarray(label.astype(np.uint8)), origin


def _write_nifti(array: np.ndarray, path: Path, spacing_mm: float, origin_ras: np.ndarray) -> None:
    """Write an (i, j, k) RAS-indexed array as NIfTI with SimpleITK (LPS world), keeping the RAS geometry."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing((float(spacing_mm),) * 3)
    img.SetOrigin((-float(origin_ras[0]), -float(origin_ras[1]), float(origin_ras[2])))
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(path), useCompression=True)


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def _dataset_json(name: str, num_train: int, num_test: int, spacing_mm: float, seed: int) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        nilearn_version = version("nilearn")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        nilearn_version = "unknown"
    return {
        "channel_names": {"0": "T1"},
        "labels": dict(DEMO_LABELS),
        "numTraining": num_train,
        "file_ending": _FILE_ENDING,
        "name": name,
        "description": (
            "nnunet-ext demo: synthetic brain-extracted T1 MRI with grey/white-matter labels, derived from the "
            "MNI ICBM152 2009a symmetric templates by random affine + elastic deformation, bias field, gamma and "
            f"noise, resampled to {spacing_mm:g} mm isotropic. {num_train} training cases (imagesTr/labelsTr) and "
            f"{num_test} held-out labelled test cases (imagesTs/labelsTs; labelsTs is not read by nnU-Net)."
        ),
        "reference": TEMPLATE_REFERENCE,
        "licence": TEMPLATE_LICENCE,
        "numTest": num_test,
        "nnunet_ext_demo": {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "spacing_mm": spacing_mm,
            "num_train": num_train,
            "num_test": num_test,
            "nilearn_version": nilearn_version,
        },
    }


def _validate(num_train: Any, num_test: Any, spacing_mm: Any, seed: Any) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(num_train) or num_train < 1:
        raise ValueError(f"num_train must be a positive integer (nnU-Net's 5-fold cross-validation needs >= 5), "
                         f"got {num_train!r}")
    if not is_int(num_test) or num_test < 0:
        raise ValueError(f"num_test must be an integer >= 0, got {num_test!r}")
    if num_train + num_test > 1000:
        raise ValueError(f"at most 1000 cases (case_000..case_999), got {num_train + num_test}")
    low, high = SPACING_RANGE_MM
    if isinstance(spacing_mm, bool) or not isinstance(spacing_mm, (int, float, np.floating, np.integer)) \
            or not low <= float(spacing_mm) <= high:
        raise ValueError(f"spacing_mm must be a number from {low:g} to {high:g} ({DEMO_SPACING_MM:g} is the "
                         f"demo's default), got {spacing_mm!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def build_demo_dataset(raw_root: str | os.PathLike, dataset_id: int = DEMO_DATASET_ID,
                       name: str = DEMO_DATASET_NAME, num_train: int = 12, num_test: int = 2,
                       spacing_mm: float = DEMO_SPACING_MM, seed: int = 0, progress: bool = True,
                       overwrite: bool = False) -> Path:
    """Write the demo dataset in nnU-Net raw format and return its folder ``raw_root/DatasetXXX_Name``.

    Layout: ``imagesTr/case_XXX_0000.nii.gz``, ``labelsTr/case_XXX.nii.gz``, ``imagesTs/`` and
    ``labelsTs/`` (held-out test cases, numbered after the training cases) and ``dataset.json``
    (channel "T1"; labels background 0, grey_matter 1, white_matter 2; credits for the templates).

    If the folder already exists complete and was built with the same settings it is reused and
    returned unchanged. If it exists with other settings or incomplete, a ``FileExistsError`` names
    the fix (``overwrite=True``, another ``dataset_id``, or removing it). With ``overwrite=True`` a
    fresh dataset replaces it (the old one stays in place until the new one is complete).

    Everything is written into a hidden temporary folder next to the target and renamed into place,
    so no half-written dataset is ever left at the target. Each case is generated from its own random
    stream ``(seed, case index)``: same seed, same arrays.
    """
    _check_id_and_name(dataset_id, name)
    _validate(num_train, num_test, spacing_mm, seed)
    num_train, num_test, seed, spacing_mm = int(num_train), int(num_test), int(seed), float(spacing_mm)
    raw_root = Path(raw_root)
    target = demo_dataset_path(raw_root, dataset_id, name)
    dataset_json = _dataset_json(name, num_train, num_test, spacing_mm, seed)
    wanted = dataset_json["nnunet_ext_demo"]

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    # another dataset with the same id would make nnU-Net's "-d ID" ambiguous
    if raw_root.is_dir():
        clash = sorted(p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != target)
        if clash:
            raise FileExistsError(f"dataset id {dataset_id} is already used by {clash[0]} in {raw_root}; "
                                  f"pass another dataset_id (the demo's default is {DEMO_DATASET_ID})")
    if target.exists() and not overwrite:
        record = _read_demo_record(target) if target.is_dir() else None
        if same_settings(record, wanted):
            log(f"Reusing the demo dataset in {target}")
            return target
        what = ("was built with other settings " + json.dumps({k: record.get(k) for k in wanted})
                if record is not None else "is not a complete nnunet-ext demo dataset")
        raise FileExistsError(f"{target} {what}; remove it, pass overwrite=True, or choose another dataset_id")

    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=raw_root))
    old: Path | None = None
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        train, test = _case_ids(num_train, num_test)
        log(f"Building the demo dataset ({num_train} training + {num_test} test cases at {spacing_mm:g} mm) "
            f"from the MNI ICBM152 templates in nilearn")
        templates = _Templates(spacing_mm)
        from tqdm import tqdm

        cases = [(c, "Tr") for c in train] + [(c, "Ts") for c in test]
        for index, (case, split) in enumerate(tqdm(cases, desc="demo cases", unit="case", disable=not progress,
                                                   file=sys.stderr)):
            rng = np.random.default_rng([seed, index])
            image, label, origin = make_demo_case(templates, spacing_mm, rng)
            _write_nifti(image, tmp / f"images{split}" / f"{case}{_IMAGE_SUFFIX}", spacing_mm, origin)
            _write_nifti(label, tmp / f"labels{split}" / f"{case}{_FILE_ENDING}", spacing_mm, origin)
        write_json(dataset_json, tmp / "dataset.json")
        if target.exists():  # overwrite=True: move the old one aside only now that the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=raw_root))
            os.replace(target, old / "dataset")
        try:
            os.replace(tmp, target)
        except OSError:
            # another process finished the same dataset first: reuse it if it matches
            record = _read_demo_record(target)
            if not same_settings(record, wanted):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old / "dataset", target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    log(f"Demo dataset written to {target}")
    return target
