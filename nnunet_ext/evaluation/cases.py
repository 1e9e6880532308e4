"""Which files are compared: references and predictions paired by name, on one grid.

Files are matched by name (nnU-Net writes predictions under the reference's file name, e.g.
``case_000.nii.gz``). Every reference must have a prediction; predictions without a reference are
ignored (returned, so the caller can list them). Each pair's header is checked before any voxel is
read: same size, spacing, origin and direction, else one :class:`EvaluationError` names the case.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class EvaluationError(ValueError):
    """Bad evaluation input (missing cases, mismatched geometry, bad labels); the message names
    the case and what to fix."""


def _case_files(folder: Path, file_ending: str) -> dict[str, Path]:
    return {p.name[:-len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending)}


def pair_cases(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike,
               file_ending: str = ".nii.gz") -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """``([(case, reference, prediction)], ignored_prediction_names)``; every reference must have a
    prediction of the same file name."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for what, d in (("reference", gt_dir), ("prediction", pred_dir)):
        if not d.is_dir():
            raise EvaluationError(f"{what} folder '{d}' does not exist")
    refs, preds = _case_files(gt_dir, file_ending), _case_files(pred_dir, file_ending)
    if not refs:
        raise EvaluationError(f"no '*{file_ending}' files in the reference folder '{gt_dir}'; "
                              f"point --gt at the labels (e.g. labelsTs) or set --file-ending")
    missing = [c for c in refs if c not in preds]
    if missing:
        shown = ", ".join(f"'{c}'" for c in missing[:10])
        shown += f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise EvaluationError(f"prediction folder '{pred_dir}' lacks {len(missing)} of {len(refs)} cases: {shown} "
                              f"(expected '{missing[0]}{file_ending}'); predict them (nnUNetv2_predict) or "
                              f"evaluate against a reference folder with only the predicted cases")
    ignored = [preds[c].name for c in preds if c not in refs]
    return [(c, refs[c].resolve(), preds[c].resolve()) for c in refs], ignored


def _header(path: Path) -> dict:
    import SimpleITK as sitk
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise EvaluationError(f"cannot read '{path}': {str(e).strip().splitlines()[-1]}") from None
    return {"size": tuple(r.GetSize()), "spacing": tuple(r.GetSpacing()), "origin": tuple(r.GetOrigin()),
            "direction": tuple(r.GetDirection()), "components": r.GetNumberOfComponents()}


def check_geometry(case: str, ref: Path, pred: Path) -> None:
    """Raise :class:`EvaluationError` naming ``case`` unless both images share size, spacing,
    origin and direction (as nnU-Net's exported predictions do)."""
    a, b = _header(ref), _header(pred)
    fix = ("; predictions must be on the reference's grid (nnU-Net's exported predictions are) — "
           "resample the prediction onto the reference image or compare against the matching references")
    if len(a["size"]) not in (2, 3) or a["components"] != 1:
        raise EvaluationError(f"case '{case}': reference '{ref}' is not a 2D/3D label map "
                              f"(size {list(a['size'])}, {a['components']} components per voxel)")
    if a["size"] != b["size"]:
        raise EvaluationError(f"case '{case}': prediction shape {list(b['size'])} (x, y, z) differs from the "
                              f"reference's {list(a['size'])}{fix}")
    checks = (("spacing", 1e-5, 1e-5), ("origin", 0.0, 1e-3), ("direction", 0.0, 1e-4))
    for key, rtol, atol in checks:
        if not np.allclose(a[key], b[key], rtol=rtol, atol=atol):
            raise EvaluationError(f"case '{case}': prediction {key} {[round(float(v), 6) for v in b[key]]} "
                                  f"(x, y, z) differs from the reference's {[round(float(v), 6) for v in a[key]]}{fix}")
    if b["components"] != 1:
        raise EvaluationError(f"case '{case}': prediction '{pred}' has {b['components']} components per voxel; "
                              f"expected a label map")

