"""PNG overlays of a case: three orthogonal mid-slices of image, reference and prediction
(written complete or not at all, through :mod:`nnunet_ext.io`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnunet_ext.io import write_file


def _read(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), tuple(img.GetSpacing()[::-1])  # (Z, Y, X), (sz, sy, sx)


def save_overlay(image: str | os.PathLike, reference: str | os.PathLike, prediction: str | os.PathLike,
                 out_png: str | os.PathLike, title: str = "") -> Path:
    """Write a 3×3 figure (rows: axial, coronal, sagittal mid-slices through the reference's centre;
    columns: image, reference over image, prediction over image), with the physical aspect ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, sp = _read(image)
    ref, _ = _read(reference)
    pred, _ = _read(prediction)
    if not (img.shape == ref.shape == pred.shape):
        raise ValueError(f"{title or out_png}: image {img.shape}, reference {ref.shape} and prediction "
                         f"{pred.shape} differ in shape")
    fg = np.argwhere(ref > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(img.shape) // 2
    views = [("axial", lambda a: a[centre[0]], sp[1] / sp[2]),
             ("coronal", lambda a: a[:, centre[1]], sp[0] / sp[2]),
             ("sagittal", lambda a: a[:, :, centre[2]], sp[0] / sp[1])]
    n_labels = int(max(ref.max(), pred.max(), 1))
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for r, (name, cut, aspect) in enumerate(views):
        for c, (col, seg) in enumerate((("image", None), ("reference", ref), ("prediction", pred))):
            ax = axes[r, c]
            ax.imshow(cut(img), cmap="gray", aspect=aspect, origin="lower")
            if seg is not None:
                s = np.ma.masked_equal(cut(seg), 0)
                ax.imshow(s, cmap="tab10", vmin=0, vmax=max(n_labels, 9), alpha=0.45, aspect=aspect,
                          origin="lower", interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(col)
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        write_file(out_png, lambda f: fig.savefig(f, format="png", dpi=80), binary=True)
    finally:
        plt.close(fig)
    return Path(out_png)
