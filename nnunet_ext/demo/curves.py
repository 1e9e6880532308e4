"""Learning curves of the demo's trainers from nnU-Net's own training log.

nnU-Net keeps one value per epoch of each logged quantity in the checkpoint (``checkpoint['logging']``,
its ``LocalLogger``): ``train_losses``, ``val_losses``, ``mean_fg_dice`` (the pseudo-Dice of the
epoch's validation patches), ``ema_fg_dice`` (its exponential moving average, which nnU-Net uses to
keep ``checkpoint_best.pth``) and ``dice_per_class_or_region``. Trainers that log more keep them there
too; MISSU's ``train_seg_losses`` is its segmentation term alone, the part comparable with the other
trainers' training loss (its total adds the distillation term).

:func:`read_curve` turns a fold's log into arrays against training iterations
(``(epoch + 1) * iterations_per_epoch``); :func:`draw_learning_curves` puts every trainer on the same
axes (validation pseudo-Dice left, training and validation loss right -- nnU-Net's cross-entropy minus
soft Dice, so it goes below 0 and -1 is perfect; a trainer's folds averaged);
:func:`save_learning_curves` writes the PNG through :mod:`nnunet_ext.io`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_ext.io import write_file

#: nnU-Net's loss (``DC_and_CE_loss``) is cross-entropy plus its Dice term, which is the *negative*
#: soft Dice: it falls below 0 as the network learns and would reach -1 with CE 0 and soft Dice 1
#: (deep-supervision outputs weighted to sum 1)
LOSS_AXIS_LABEL = "loss = cross-entropy − soft Dice (nnU-Net's DC+CE;\nlower is better, −1 is perfect)"

#: the keys of nnU-Net's log every curve needs
_REQUIRED = ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region")


def read_log(fold_dir: Path) -> dict:
    """``checkpoint['logging']`` of a trained fold (``checkpoint_final.pth``, else ``checkpoint_latest.pth``)."""
    import torch

    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        path = Path(fold_dir) / name
        if path.is_file():
            log = torch.load(path, map_location="cpu", weights_only=False).get("logging")
            if not isinstance(log, dict) or any(k not in log for k in _REQUIRED):
                raise ValueError(f"{path} has no nnU-Net training log (keys {', '.join(_REQUIRED)})")
            return log
    raise FileNotFoundError(f"no checkpoint_final.pth or checkpoint_latest.pth in {fold_dir}")


def read_curve(log: dict, iterations_per_epoch: int) -> dict:
    """One fold's curve from nnU-Net's log (see :func:`read_log`); epochs the log holds completely.

    Returns lists of equal length E: ``iterations`` (``(epoch + 1) * iterations_per_epoch``),
    ``train_loss`` (the segmentation term where the trainer logs it separately, ``train_seg_losses``,
    else ``train_losses``), ``val_loss``, ``pseudo_dice`` (``mean_fg_dice``), ``ema_pseudo_dice`` and
    ``pseudo_dice_per_class`` (E lists of C values).
    """
    if iterations_per_epoch < 1:
        raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
    train = log["train_seg_losses"] if len(log.get("train_seg_losses", ())) else log["train_losses"]
    series = {"train_loss": train, "val_loss": log["val_losses"], "pseudo_dice": log["mean_fg_dice"],
              "ema_pseudo_dice": log["ema_fg_dice"], "pseudo_dice_per_class": log["dice_per_class_or_region"]}
    epochs = min(len(v) for v in series.values())
    curve = {"iterations": [(e + 1) * iterations_per_epoch for e in range(epochs)]}
    for key, values in series.items():
        curve[key] = ([[float(x) for x in v] for v in values[:epochs]] if key == "pseudo_dice_per_class"
                      else [float(x) for x in values[:epochs]])
    return curve


def mean_curve(curves: list[dict]) -> dict:
    """The mean over folds of :func:`read_curve` results, cut to the shortest fold."""
    if not curves:
        raise ValueError("no curves to average")
    n = min(len(c["iterations"]) for c in curves)
    out = {"iterations": curves[0]["iterations"][:n]}
    for key in ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "pseudo_dice_per_class"):
        out[key] = np.mean([np.asarray(c[key][:n], dtype=float) for c in curves], axis=0).tolist()
    return out


def draw_learning_curves(curves: dict[str, dict], title: str = ""):
    """A matplotlib figure: left, the validation pseudo-Dice (nnU-Net's EMA solid, the per-epoch value
    faint) of each trainer; right, its training loss (solid) and validation loss (dashed); x axis:
    training iterations. ``curves`` maps a label to a (mean) curve of :func:`read_curve`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_dice, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, c) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        x = c["iterations"]
        marker = "o" if len(x) == 1 else None
        ax_dice.plot(x, c["ema_pseudo_dice"], color=color, label=label, marker=marker)
        ax_dice.plot(x, c["pseudo_dice"], color=color, alpha=0.3, linewidth=0.8, marker=marker)
        ax_loss.plot(x, c["train_loss"], color=color, label=f"{label} train", marker=marker)
        ax_loss.plot(x, c["val_loss"], color=color, linestyle="--", label=f"{label} validation", marker=marker)
    ax_dice.set(xlabel="training iterations", ylabel="validation pseudo-Dice (foreground mean)",
                title="pseudo-Dice: nnU-Net's EMA (solid), per epoch (faint)")
    ax_dice.set_ylim(0, 1)
    ax_loss.set(xlabel="training iterations", ylabel=LOSS_AXIS_LABEL,
                title="training (solid) and validation (dashed) loss")
    ax_loss.axhline(-1.0, color="grey", linewidth=0.8, linestyle=":")
    ax_loss.annotate("−1: perfect (CE 0, soft Dice 1)", (0.01, -1.0), xycoords=("axes fraction", "data"),
                     textcoords="offset points", xytext=(0, 3), fontsize=7, color="grey")
    for ax in (ax_dice, ax_loss):
        ax.grid(alpha=0.3)
    ax_dice.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_learning_curves(curves: dict[str, dict], out_png: Path, title: str = "") -> Path:
    """:func:`draw_learning_curves` written to ``out_png`` (complete or not at all)."""
    import matplotlib.pyplot as plt

    fig = draw_learning_curves(curves, title)
    try:
        write_file(out_png, lambda f: fig.savefig(f, format="png", dpi=90), binary=True)
    finally:
        plt.close(fig)
    return Path(out_png)
