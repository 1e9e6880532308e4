"""Whole-volume prediction through nnU-Net's predictor: tiles as nnU-Net tiles, 8 passes with
mirroring, rows from fresh subprocesses, and the CLI's --predict options."""

import math

import numpy as np
import pytest

from nnunet_ext.bench.networks import NNUNET, default_architectures
from nnunet_ext.bench.prediction import (ROW_KEYS, benchmark_prediction, format_prediction_table,
                                         measure_prediction, mirroring_modes)
from nnunet_ext.cli.main import main

PATCH = (16, 16, 16)
VOLUME = (20, 24, 20)       # larger than the patch on every axis: overlapping tiles


def nnunet_tiles(volume, patch, step=0.5) -> int:
    """Tiles of nnU-Net's sliding window, from nnU-Net's step function (a volume smaller than the
    patch is padded to it)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = [max(v, p) for v, p in zip(volume, patch)]
    return int(np.prod([len(s) for s in compute_steps_for_sliding_window(padded, patch, step)]))


@pytest.mark.parametrize("name", [NNUNET, *default_architectures()])
def test_every_network_predicts_a_volume_tile_by_tile(name):
    row = measure_prediction(name, VOLUME, PATCH, num_classes=3)
    assert set(ROW_KEYS) <= set(row)
    assert row["arch"] == name and row["mirroring"] is False
    assert row["tiles"] == nnunet_tiles(VOLUME, PATCH) == 8
    assert row["network_calls"] == row["tiles"]
    for key in ("wall_s", "s_per_tile", "peak_rss_mib"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["peak_mib"] >= 0 and row["peak_rss_mib"] >= row["peak_mib"]


def test_mirroring_calls_the_network_eight_times_per_tile():
    volume = (12, 16, 40)    # padded to 16 on Z; along X tiles at 0, 8, 16, 24 (step half a patch)
    off = measure_prediction("small_unet", volume, PATCH, mirroring=False)
    on = measure_prediction("small_unet", volume, PATCH, mirroring=True)
    assert off["tiles"] == on["tiles"] == nnunet_tiles(volume, PATCH) == 4
    assert off["network_calls"] == 4 and on["network_calls"] == 8 * 4


def test_benchmark_rows_come_from_subprocesses_and_make_a_table():
    rows = benchmark_prediction([], volume=VOLUME, patch_size=PATCH, mirroring="both", threads=1)
    assert [(r["arch"], r["mirroring"]) for r in rows] == [(NNUNET, False), (NNUNET, True)]
    for r in rows:
        assert "error" not in r, r
        assert r["threads"] == 1 and r["tiles"] == 8 and r["peak_mib"] > 0 and r["wall_s"] > 0
    assert rows[1]["network_calls"] == 8 * rows[0]["network_calls"]
    table = format_prediction_table(rows, budget_gib=24).splitlines()
    assert table[0].startswith("| network | mirroring | tiles | network calls | wall s") and "≤ 24 GiB" in table[0]
    assert len(table) == 4 and all("(1.00×)" in line and line.endswith("| yes |") for line in table[2:])
    assert "| on (8 passes) |" in table[3]
    failed = format_prediction_table([*rows, {"arch": "x", "mirroring": False, "error": "timed out after 1 s"}], 24)
    last = failed.splitlines()[-1]
    assert last.startswith("| x | off |") and last.endswith("| error: timed out after 1 s |")
    assert last.count("|") == table[0].count("|")


def test_bad_arguments():
    assert mirroring_modes("both") == [False, True]
    with pytest.raises(ValueError, match="mirroring must be one of off, on, both"):
        benchmark_prediction([], mirroring="sometimes")
    with pytest.raises(ValueError, match="unknown architecture"):
        benchmark_prediction(["nope"])
    with pytest.raises(ValueError, match="volume takes 3 voxel counts"):
        benchmark_prediction([], volume=(0, 10, 10))


def test_cli_passes_the_options(monkeypatch, capsys):
    import nnunet_ext.bench.prediction as pr

    seen = {}

    def fake(archs, **kw):
        seen.update(kw, archs=archs)
        return [{"arch": NNUNET, "mirroring": False, "volume": kw["volume"], "patch_size": kw["patch_size"],
                 "tiles": 12, "network_calls": 12, "wall_s": 6.0, "s_per_tile": 0.5, "peak_rss_mib": 30000.0,
                 "peak_mib": 100.0, "device": "cpu", "threads": 2}]

    monkeypatch.setattr(pr, "benchmark_prediction", fake)
    assert main(["benchmark", "--predict", "--archs", "small_unet", "--predict-shape", "20", "24", "20",
                 "--predict-patch", "16", "16", "16", "--mirroring", "both", "--threads", "2"]) == 0
    assert seen["archs"] == ["small_unet"] and seen["volume"] == [20, 24, 20] and seen["patch_size"] == [16, 16, 16]
    assert seen["mirroring"] == "both" and seen["threads"] == 2
    out = capsys.readouterr().out
    assert "volume [20, 24, 20], tile [16, 16, 16]" in out and out.rstrip().endswith("| NO |")  # 30000 MiB > 24 GiB
    assert main(["benchmark", "--predict"]) == 0     # defaults: a 1 mm brain, 128^3 tiles, no mirroring
    assert seen["volume"] == [160, 192, 160] and seen["patch_size"] == [128, 128, 128] and seen["mirroring"] == "off"


@pytest.mark.parametrize("argv, message", [
    (["--predict-shape", "0", "24", "20"], "--predict-shape takes voxel counts >= 1 (z y x), got 0 24 20"),
    (["--predict-patch", "33", "32", "32"], "--predict-patch 33 32 32 is not divisible by the total stride 8 8 8"),
    (["--predict-patch", "4", "4", "4"], "--predict-patch 4 4 4 is too small for a U-Net"),
    (["--memory-budget", "0"], "--memory-budget must be > 0 GiB, got 0"),
    (["--archs", "nope"], "unknown architecture(s) nope"),
])
def test_cli_bad_value_is_one_line(argv, message):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--predict", *argv])
    text = str(e.value.code)
    assert text.startswith("nnunet-ext benchmark: ") and "\n" not in text and message in text, text


def test_cli_bad_mirroring_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--predict", "--mirroring", "x"])
    assert e.value.code == 2
    assert "argument --mirroring: invalid choice: 'x'" in capsys.readouterr().err.splitlines()[-1]
