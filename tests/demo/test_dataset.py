"""The embedded demo dataset (nnunet_ext.demo.dataset): determinism, labels, geometry, nnU-Net's integrity
check, reuse, and never leaving a half-written dataset. Small builds only (6 mm grid, a few cases)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nilearn")
sitk = pytest.importorskip("SimpleITK")

from nnunet_ext.demo import dataset as demo  # noqa: E402

SMALL = dict(num_train=5, num_test=1, spacing_mm=6.0, progress=False)


def _read(path: Path) -> tuple[np.ndarray, dict]:
    img = sitk.ReadImage(str(path))
    geometry = {"spacing": img.GetSpacing(), "origin": img.GetOrigin(), "direction": img.GetDirection(),
                "size": img.GetSize()}
    return sitk.GetArrayFromImage(img), geometry


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*.nii.gz"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """One small demo dataset shared by the read-only tests."""
    return demo.build_demo_dataset(tmp_path_factory.mktemp("raw"), **SMALL)


def test_layout_and_dataset_json(small):
    assert small.name == f"Dataset{demo.DEMO_DATASET_ID:03d}_{demo.DEMO_DATASET_NAME}"
    dj = json.loads((small / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1"}
    assert dj["labels"] == {"background": 0, "grey_matter": 1, "white_matter": 2}
    assert dj["numTraining"] == 5 and dj["file_ending"] == ".nii.gz"
    assert "McConnell Brain Imaging Centre" in dj["reference"] and "nilearn" in dj["reference"]
    assert "BSD-3" in dj["licence"] and "McGill" in dj["licence"]
    assert [str(p) for p in _files(small)] == (
        [f"imagesTr/case_{i:03d}_0000.nii.gz" for i in range(5)] + ["imagesTs/case_005_0000.nii.gz"]
        + [f"labelsTr/case_{i:03d}.nii.gz" for i in range(5)] + ["labelsTs/case_005.nii.gz"])
    assert demo.find_demo_dataset(small.parent) == small
    # no temporary folders left next to the dataset
    assert [p.name for p in small.parent.iterdir()] == [small.name]


def test_labels_exactly_as_declared_and_geometry_matches(small):
    declared = set(json.loads((small / "dataset.json").read_text())["labels"].values())
    for split in ("Tr", "Ts"):
        for label_file in sorted((small / f"labels{split}").iterdir()):
            case = label_file.name[: -len(".nii.gz")]
            label, g_label = _read(label_file)
            image, g_image = _read(small / f"images{split}" / f"{case}_0000.nii.gz")
            assert set(np.unique(label).tolist()) == declared, case
            assert g_image == g_label, case
            assert np.allclose(g_image["spacing"], (6.0, 6.0, 6.0))
            assert image.shape == label.shape
            # brain-extracted: zero outside the brain, tissue labels only where there is signal
            assert image.min() == 0 and image.max() > 0
            assert (image[label > 0] > 0).mean() > 0.99
            # cropped to the brain with a small margin: tissue close to every face of the box
            for axis in range(3):
                profile = (label > 0).any(axis=tuple(a for a in range(3) if a != axis))
                assert profile[:4].any() and profile[-4:].any(), (case, axis)


def test_same_seed_identical_other_seed_differs(small, tmp_path):
    again = demo.build_demo_dataset(tmp_path / "again", **SMALL)
    assert _files(again) == _files(small)
    assert (again / "dataset.json").read_text() == (small / "dataset.json").read_text()
    for rel in _files(small):
        a, ga = _read(small / rel)
        b, gb = _read(again / rel)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), rel
        assert ga == gb, rel

    other = demo.build_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    for rel in ("imagesTr/case_000_0000.nii.gz", "labelsTr/case_000.nii.gz"):
        a, _ = _read(small / rel)
        b, _ = _read(other / rel)
        assert a.shape != b.shape or a.tobytes() != b.tobytes(), rel


def test_nnunet_integrity_check_passes(small):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        verify_dataset_integrity(str(small), num_processes=1)
    text = out.getvalue()
    assert "verify_dataset_integrity Done" in text
    assert "Error" not in text and "Warning" not in text and "WARNING" not in text, text


def test_reuse_existing_complete_dataset(small, tmp_path):
    raw = tmp_path / "raw"
    target = raw / small.name
    shutil.copytree(small, target)
    stamp = {p: p.stat().st_mtime_ns for p in target.rglob("*")}

    assert demo.find_demo_dataset(raw) == target
    assert demo.build_demo_dataset(raw, **SMALL) == target
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*")} == stamp  # untouched

    # other settings: a clear error naming the ways out, dataset untouched
    with pytest.raises(FileExistsError, match="overwrite=True"):
        demo.build_demo_dataset(raw, **{**SMALL, "seed": 3})
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*")} == stamp
    # overwrite replaces it with the requested settings
    demo.build_demo_dataset(raw, **{**SMALL, "num_train": 2, "num_test": 0, "overwrite": True})
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 2
    assert len(list((target / "imagesTr").iterdir())) == 2
    assert [p.name for p in raw.iterdir()] == [target.name]


def test_incomplete_folder_is_not_reused(small, tmp_path):
    raw = tmp_path / "raw"
    target = raw / small.name
    shutil.copytree(small, target)
    (target / "labelsTr" / "case_003.nii.gz").unlink()
    assert demo.find_demo_dataset(raw) is None
    with pytest.raises(FileExistsError, match="not a complete"):
        demo.build_demo_dataset(raw, **SMALL)


def test_failure_midway_leaves_no_dataset(tmp_path, monkeypatch):
    real = demo.make_demo_case
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated failure while generating case 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "make_demo_case", flaky)
    raw = tmp_path / "raw"
    with pytest.raises(RuntimeError, match="simulated failure"):
        demo.build_demo_dataset(raw, **SMALL)
    assert not demo.demo_dataset_path(raw).exists()
    assert list(raw.iterdir()) == []  # temporary folder removed too
    assert demo.find_demo_dataset(raw) is None


def test_failed_overwrite_keeps_the_old_dataset(small, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    target = raw / small.name
    shutil.copytree(small, target)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(demo, "make_demo_case", broken)
    with pytest.raises(RuntimeError):
        demo.build_demo_dataset(raw, **{**SMALL, "seed": 7, "overwrite": True})
    assert demo.find_demo_dataset(raw) == target
    assert json.loads((target / "dataset.json").read_text())["nnunet_ext_demo"]["seed"] == 0
    assert [p.name for p in raw.iterdir()] == [target.name]


def test_custom_id_and_name_and_id_clash(tmp_path):
    raw = tmp_path / "raw"
    folder = demo.build_demo_dataset(raw, dataset_id=42, name="Brains", num_train=1, num_test=0,
                                     spacing_mm=8.0, progress=False)
    assert folder == raw / "Dataset042_Brains"
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    assert not (folder / "imagesTs").exists() or list((folder / "imagesTs").iterdir()) == []
    with pytest.raises(FileExistsError, match="dataset id 42 is already used by Dataset042_Brains"):
        demo.build_demo_dataset(raw, dataset_id=42, name="Other", num_train=1, num_test=0, spacing_mm=8.0,
                                progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_train=0), "num_train"),
    (dict(num_test=-1), "num_test"),
    (dict(spacing_mm=0.2), "spacing_mm"),
    (dict(seed=-1), "seed"),
    (dict(dataset_id=1000), "dataset_id"),
    (dict(name="has space"), "name"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo.build_demo_dataset(tmp_path, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_one_default_spacing():
    assert demo.demo_settings()["spacing_mm"] == demo.DEMO_SPACING_MM
    low, high = demo.SPACING_RANGE_MM
    with pytest.raises(ValueError, match=rf"from {low:g} to {high:g} \({demo.DEMO_SPACING_MM:g} is the demo's default\)"):
        demo.demo_settings(spacing_mm=high + 1)


def test_missing_nilearn_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # makes `import nilearn` fail
    with pytest.raises(ImportError, match="pip install nilearn"):
        demo.build_demo_dataset(tmp_path / "raw", **SMALL)
    assert list((tmp_path / "raw").iterdir()) == []


def test_import_is_light():
    code = ("import sys, nnunet_ext.demo.dataset; "
            "print(sorted(m for m in ('nilearn', 'nibabel', 'scipy.ndimage') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
