"""Dice / HD95 / NSD on hand-built volumes with known answers, and the empty-mask conventions."""

import math

import numpy as np
import pytest

from nnunet_ext.evaluation.metrics import (case_metrics, dice, summarize_class, summarize_overall,
                                           surface_metrics)


def ball(radius: float, n: int = 40) -> np.ndarray:
    c = (n - 1) / 2
    z, y, x = np.ogrid[:n, :n, :n]
    return (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 <= radius ** 2


def slab(pad_z: int = 0, pad_x: int = 0) -> np.ndarray:
    """A flat box (4 x 20 x 20 voxels), optionally grown by ``pad`` voxels on both sides of z or x."""
    a = np.zeros((20, 40, 40), bool)
    a[8 - pad_z:12 + pad_z, 10:30, 10 - pad_x:30 + pad_x] = True
    return a


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 0.7)])
def test_identical_masks_are_perfect(spacing):
    a = ball(8)
    assert dice(a, a) == 1.0
    assert surface_metrics(a, a, spacing, tolerance_mm=0.0) == {"hd95": 0.0, "nsd": 1.0}


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("s", [1.0, 2.0])
def test_concentric_spheres_hd95_is_k_times_spacing(k, s):
    # the prediction is the reference grown by a shell k voxels thick: every surface distance is
    # about k voxels (the digital spheres' surfels sit within half a voxel of that)
    m = surface_metrics(ball(10), ball(10 + k), (s, s, s), tolerance_mm=1.0)
    assert k * s <= m["hd95"] <= (k + 0.5) * s


def test_nsd_falls_from_one_to_zero_as_tolerance_drops_below_shell():
    k, s = 3, 2.0
    ref, pred = ball(10), ball(10 + k)
    tolerances = [t * s for t in (0.5, 1.5, 2.5, 3.0, 3.5, 5.0)]
    nsd = [surface_metrics(ref, pred, (s, s, s), t)["nsd"] for t in tolerances]
    assert nsd == sorted(nsd)                        # monotone in the tolerance
    assert nsd[0] == 0.0 and nsd[1] < 0.05            # far below k * spacing: nothing within
    assert nsd[-2] > 0.99 and nsd[-1] == 1.0          # above k * spacing: everything within
    assert 0.05 < nsd[3] < 1.0                        # at about k * spacing it is in between


@pytest.mark.parametrize("k", [1, 2])
def test_anisotropic_spacing_is_honoured(k):
    spacing = (3.0, 1.0, 1.0)                         # (z, y, x): thick slices
    ref = slab()
    grown_z = surface_metrics(ref, slab(pad_z=k), spacing, tolerance_mm=3.0 * k)
    assert grown_z["hd95"] == pytest.approx(3.0 * k)  # k slices of 3 mm
    assert grown_z["nsd"] == pytest.approx(1.0)
    assert surface_metrics(ref, slab(pad_z=k), spacing, 3.0 * k - 0.1)["nsd"] < 0.8
    grown_x = surface_metrics(ref, slab(pad_x=k), spacing, tolerance_mm=1.0)
    assert grown_x["hd95"] == pytest.approx(1.0 * k)  # k columns of 1 mm
    # the same voxels with isotropic spacing: the z growth is k mm, not 3k
    assert surface_metrics(ref, slab(pad_z=k), (1.0, 1.0, 1.0), 1.0)["hd95"] == pytest.approx(k)


def test_empty_mask_conventions():
    a, empty = ball(5, 16), np.zeros((16, 16, 16), bool)
    assert math.isnan(dice(empty, empty))
    both = surface_metrics(empty, empty, (1, 1, 1))
    assert math.isnan(both["hd95"]) and math.isnan(both["nsd"])
    for ref, pred in ((a, empty), (empty, a)):
        assert dice(ref, pred) == 0.0
        assert surface_metrics(ref, pred, (1, 1, 1)) == {"hd95": math.inf, "nsd": 0.0}


def test_dice_matches_nnunet():
    rng = np.random.default_rng(0)
    ref, pred = rng.random((12, 12, 12)) > 0.5, rng.random((12, 12, 12)) > 0.5
    tp, fp, fn = (ref & pred).sum(), (~ref & pred).sum(), (ref & ~pred).sum()
    assert dice(ref, pred) == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_case_metrics_labels_regions_and_ignore_label():
    seg = np.zeros((20, 40, 40), np.uint8)
    seg[slab()] = 1
    seg[2:5, 2:6, 2:6] = 2
    pred = seg.copy()
    pred[2:5, 2:6, 2:6] = 0                           # label 2 missed
    m = case_metrics(seg, pred, (3.0, 1.0, 1.0), [1, 2, 3, (1, 2)], tolerance_mm=1.0)
    assert list(m) == ["1", "2", "3", "(1, 2)"]       # nnU-Net's keys
    assert m["1"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "n_ref": 1600, "n_pred": 1600}
    assert m["2"]["dice"] == 0.0 and m["2"]["hd95"] == math.inf and m["2"]["nsd"] == 0.0
    assert m["2"]["n_ref"] == 48 and m["2"]["n_pred"] == 0
    assert math.isnan(m["3"]["dice"]) and math.isnan(m["3"]["hd95"]) and math.isnan(m["3"]["nsd"])
    assert m["(1, 2)"]["n_ref"] == 1648 and 0 < m["(1, 2)"]["dice"] < 1

    # voxels of the ignore label in the reference are not scored
    ref = seg.copy()
    ref[2:5, 2:6, 2:6] = 9
    pred = seg.copy()                                 # predicts label 2 where the reference is "ignore"
    m = case_metrics(ref, pred, (1, 1, 1), [1, 2], ignore_label=9)
    assert math.isnan(m["2"]["dice"]) and math.isnan(m["2"]["hd95"]) and m["2"]["n_pred"] == 0
    assert m["1"]["dice"] == 1.0


def test_means_skip_nan_and_keep_inf():
    per_case = [{"dice": 1.0, "hd95": 2.0, "nsd": 1.0}, {"dice": 0.5, "hd95": 4.0, "nsd": 0.5},
                {"dice": math.nan, "hd95": math.nan, "nsd": math.nan},
                {"dice": 0.0, "hd95": math.inf, "nsd": 0.0}]
    m = summarize_class(per_case)
    assert m["dice"] == pytest.approx(0.5) and m["nsd"] == pytest.approx(0.5)
    assert m["hd95"] == math.inf and m["hd95_finite"] == pytest.approx(3.0)
    assert (m["n_cases"], m["n_both_empty"], m["n_one_empty"]) == (4, 1, 1)
    nan_only = summarize_class([per_case[2]])
    assert all(math.isnan(nan_only[k]) for k in ("dice", "hd95", "hd95_finite", "nsd"))
    o = summarize_overall([m, nan_only, summarize_class(per_case[:2])])
    assert o["dice"] == pytest.approx(0.625) and o["hd95"] == math.inf and o["hd95_finite"] == pytest.approx(3.0)


def test_bad_arguments_raise():
    a = ball(4, 10)
    with pytest.raises(ValueError, match="differ in shape"):
        surface_metrics(a, a[:-1], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(a, a, (1, 1))


def test_masks_touching_the_volume_border():
    # surface-distance crops to the bounding box; objects that fill the volume must still get
    # their outer surface, at both ends of every axis
    full = np.ones((6, 8, 8), bool)
    assert surface_metrics(full, full, (2, 1, 1)) == {"hd95": 0.0, "nsd": 1.0}
    low, high = full.copy(), full.copy()
    low[0], high[-1] = False, False
    assert surface_metrics(full, low, (2, 1, 1))["hd95"] == 2.0
    assert surface_metrics(full, high, (2, 1, 1))["hd95"] == 2.0
