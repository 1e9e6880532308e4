"""Learning curves from nnU-Net's training log: values against iterations, averaged over folds,
drawn on shared axes and written as a PNG."""

import numpy as np
import pytest
import torch

from nnunet_ext.demo.curves import (draw_learning_curves, mean_curve, read_curve, read_log,
                                    save_learning_curves)


def _log(epochs: int, offset: float = 0.0, extra_epoch_of: str | None = None) -> dict:
    """A log as nnU-Net's LocalLogger keeps it: one value per epoch and key."""
    e = np.arange(epochs, dtype=float)
    log = {"train_losses": list(-0.1 * e + offset), "val_losses": list(-0.05 * e + offset),
           "mean_fg_dice": list(0.1 * e + offset), "ema_fg_dice": list(0.05 * e + offset),
           "dice_per_class_or_region": [[0.1 * x, 0.2 * x] for x in e], "lrs": list(0.01 - 1e-4 * e),
           "epoch_start_timestamps": list(e), "epoch_end_timestamps": list(e + 1)}
    if extra_epoch_of:  # a run stopped between logging two keys of its last epoch
        log[extra_epoch_of] = log[extra_epoch_of] + [99.0]
    return log


def _save_fold(fold_dir, log, name="checkpoint_final.pth"):
    fold_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {}, "logging": log}, fold_dir / name)


def test_curve_is_read_from_the_checkpoint_against_iterations(tmp_path):
    _save_fold(tmp_path / "fold_0", _log(4, extra_epoch_of="train_losses"), "checkpoint_latest.pth")
    curve = read_curve(read_log(tmp_path / "fold_0"), iterations_per_epoch=25)
    assert curve["iterations"] == [25, 50, 75, 100]                       # the incomplete 5th epoch is left out
    assert curve["train_loss"] == pytest.approx([0.0, -0.1, -0.2, -0.3])
    assert curve["val_loss"] == pytest.approx([0.0, -0.05, -0.1, -0.15])
    assert curve["pseudo_dice"] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert curve["ema_pseudo_dice"] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert curve["pseudo_dice_per_class"][3] == pytest.approx([0.3, 0.6])

    # the final checkpoint wins over the latest one
    _save_fold(tmp_path / "fold_0", _log(2, offset=1.0))
    assert read_curve(read_log(tmp_path / "fold_0"), 10)["ema_pseudo_dice"] == pytest.approx([1.0, 1.05])


def test_segmentation_term_is_the_training_loss_where_logged_apart():
    log = _log(3)
    log["train_seg_losses"] = [5.0, 4.0, 3.0]           # MISSU: total = segmentation + distillation
    assert read_curve(log, 1)["train_loss"] == [5.0, 4.0, 3.0]


def test_mean_over_folds_is_cut_to_the_shortest():
    a, b = read_curve(_log(3), 5), read_curve(_log(2, offset=1.0), 5)
    m = mean_curve([a, b])
    assert m["iterations"] == [5, 10]
    assert m["ema_pseudo_dice"] == pytest.approx([0.5, 0.55])
    np.testing.assert_allclose(m["pseudo_dice_per_class"], [[0.0, 0.0], [0.1, 0.2]])
    with pytest.raises(ValueError, match="no curves"):
        mean_curve([])


def test_every_trainer_is_drawn_on_the_same_axes_and_written(tmp_path):
    import matplotlib.image
    import matplotlib.pyplot as plt

    curves = {"nnUNetTrainer": read_curve(_log(4), 25), "MISSUTrainer": read_curve(_log(4, offset=0.2), 25)}
    fig = draw_learning_curves(curves, title="demo")
    ax_dice, ax_loss = fig.axes
    solid = [line for line in ax_dice.lines if line.get_alpha() is None]
    assert [line.get_label() for line in solid] == list(curves)
    for line, c in zip(solid, curves.values()):
        assert list(line.get_xdata()) == c["iterations"] and list(line.get_ydata()) == c["ema_pseudo_dice"]
    losses = {line.get_label(): list(line.get_ydata()) for line in ax_loss.lines}
    assert losses["MISSUTrainer train"] == curves["MISSUTrainer"]["train_loss"]
    assert losses["nnUNetTrainer validation"] == curves["nnUNetTrainer"]["val_loss"]
    plt.close(fig)

    png = save_learning_curves(curves, tmp_path / "out" / "learning_curves.png")
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[1] > img.shape[0] > 100
    assert sorted(p.name for p in png.parent.iterdir()) == ["learning_curves.png"]   # no temporary left


def test_missing_or_foreign_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint_final.pth or checkpoint_latest.pth"):
        read_log(tmp_path)
    torch.save({"network_weights": {}}, tmp_path / "checkpoint_final.pth")
    with pytest.raises(ValueError, match="has no nnU-Net training log"):
        read_log(tmp_path)
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        read_curve(_log(1), 0)
    empty = read_curve(_log(0), 1)
    assert empty["iterations"] == [] and empty["ema_pseudo_dice"] == []


def test_the_loss_axis_says_what_nnunet_loss_is_and_where_perfect_lies():
    """nnU-Net's loss is CE minus soft Dice: its sign and floor are on the axis, -1 marked."""
    import matplotlib.pyplot as plt

    fig = draw_learning_curves({"nnUNetTrainer": read_curve(_log(3), 10)})
    try:
        _, ax_loss = fig.axes
        label = ax_loss.get_ylabel()
        assert "cross-entropy − soft Dice" in label and "−1 is perfect" in label
        assert any(list(line.get_ydata()) == [-1.0, -1.0] for line in ax_loss.lines)
    finally:
        plt.close(fig)
