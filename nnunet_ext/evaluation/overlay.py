"""PNG overlays of a case: three orthogonal mid-slices of image, reference and prediction, with a
legend of the label colours and the case's Dice per label (written complete or not at all, through
:mod:`nnunet_ext.io`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnunet_ext.io import write_file


def _read(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), tuple(img.GetSpacing()[::-1])  # (Z, Y, X), (sz, sy, sx)


#: colours of labels 1, 2, ... (matplotlib's tab10 from its second entry; label 0 is not drawn)
LABEL_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
                 "#1f77b4")


def label_colour(label: int) -> str:
    """The colour label ``label`` (>= 1) is drawn in, also in the legend."""
    return LABEL_COLOURS[(int(label) - 1) % len(LABEL_COLOURS)]


def draw_overlay(image: str | os.PathLike, reference: str | os.PathLike, prediction: str | os.PathLike,
                 title: str = "", label_names: dict[int, str] | None = None,
                 dice: dict[int, float] | None = None):
    """A 3×3 matplotlib figure (rows: axial, coronal, sagittal mid-slices through the reference's
    centre; columns: image, reference over image, prediction over image) with the physical aspect
    ratio, and a legend below: one colour per label present, with its name (``label_names``) and the
    case's Dice of that label (``dice``) where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    img, sp = _read(image)
    ref, _ = _read(reference)
    pred, _ = _read(prediction)
    if not (img.shape == ref.shape == pred.shape):
        raise ValueError(f"{title or image}: image {img.shape}, reference {ref.shape} and prediction "
                         f"{pred.shape} differ in shape")
    fg = np.argwhere(ref > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(img.shape) // 2
    views = [("axial", lambda a: a[centre[0]], sp[1] / sp[2]),
             ("coronal", lambda a: a[:, centre[1]], sp[0] / sp[2]),
             ("sagittal", lambda a: a[:, :, centre[2]], sp[0] / sp[1])]
    labels = sorted(({int(v) for v in np.unique(ref)} | {int(v) for v in np.unique(pred)}) - {0})
    top = max(labels, default=1)
    cmap = ListedColormap([label_colour(v) for v in range(1, top + 1)])
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.6))
    for r, (name, cut, aspect) in enumerate(views):
        for c, (col, seg) in enumerate((("image", None), ("reference", ref), ("prediction", pred))):
            ax = axes[r, c]
            ax.imshow(cut(img), cmap="gray", aspect=aspect, origin="lower")
            if seg is not None:  # label v -> colour v - 1 of cmap
                s = np.ma.masked_equal(cut(seg), 0)
                ax.imshow(s, cmap=cmap, vmin=0.5, vmax=top + 0.5, alpha=0.45, aspect=aspect,
                          origin="lower", interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(col)
            if c == 0:
                ax.set_ylabel(name)
    names, dice = label_names or {}, dice or {}
    handles = [Patch(facecolor=label_colour(v), alpha=0.7,
                     label=f"{v} {names.get(v, '')}".rstrip()
                     + (f": Dice {dice[v]:.3f}" if v in dice and np.isfinite(dice[v]) else ""))
               for v in labels]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), frameon=False,
                   title="label (colour): Dice of prediction vs reference" if dice else "label (colour)")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    return fig


def save_overlay(image: str | os.PathLike, reference: str | os.PathLike, prediction: str | os.PathLike,
                 out_png: str | os.PathLike, title: str = "", label_names: dict[int, str] | None = None,
                 dice: dict[int, float] | None = None) -> Path:
    """:func:`draw_overlay` written to ``out_png`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = draw_overlay(image, reference, prediction, title, label_names, dice)
    try:
        write_file(out_png, lambda f: fig.savefig(f, format="png", dpi=80), binary=True)
    finally:
        plt.close(fig)
    return Path(out_png)
