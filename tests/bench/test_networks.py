"""The benchmark: nnU-Net's default network as nnU-Net plans it, real measurements in subprocesses."""

import math

import pytest
import torch

from nnunet_ext.architectures import PlanSpec, available_architectures
from nnunet_ext.architectures.plans import default_architecture
from nnunet_ext.bench.networks import (NNUNET, NNUNET_TITLE, ROW_KEYS, benchmark, build_benchmark_network,
                                      default_architectures, format_table)


def test_nnunet_network_follows_the_default_planner():
    a = default_architecture((64, 64, 64))
    k = a["arch_kwargs"]
    assert a["network_class_name"].endswith("PlainConvUNet")
    assert k["n_stages"] == 5 and k["features_per_stage"] == [32, 64, 128, 256, 320]
    assert k["strides"] == [list(s) for s in PlanSpec.from_patch((64, 64, 64)).strides]
    assert k["n_conv_per_stage"] == [2] * 5 and k["n_conv_per_stage_decoder"] == [2] * 4
    aniso = default_architecture((32, 128, 128), spacing=(3.0, 1.0, 1.0))["arch_kwargs"]
    assert aniso["kernel_sizes"][0] == [1, 3, 3]     # the planner's in-plane kernels for thick slices
    net = build_benchmark_network(NNUNET, PlanSpec.from_patch((16, 16, 16)), 1, 3, deep_supervision=True)
    out = net(torch.zeros(1, 1, 16, 16, 16))
    assert isinstance(out, list) and out[0].shape == (1, 3, 16, 16, 16)


def test_default_architectures_are_the_registrys_paper_networks():
    assert default_architectures() == available_architectures(paper_network=True)
    assert "small_unet" in available_architectures() and "small_unet" not in default_architectures()


def test_benchmark_small_unet_and_nnunet_at_a_tiny_patch():
    rows = benchmark(["small_unet"], patch_size=(16, 16, 16), num_classes=3, repeats=1, warmup=0, threads=2)
    assert [r["arch"] for r in rows] == [NNUNET, "small_unet"]
    for r in rows:
        assert "error" not in r, r
        assert set(ROW_KEYS) <= set(r)
        for key in ("params", "params_inference", "macs", "train_s", "infer_s", "peak_train_mib"):
            assert r[key] > 0 and math.isfinite(r[key]), (r["arch"], key, r[key])
        assert r["peak_infer_mib"] >= 0 and r["device"] == "cpu" and r["threads"] == 2
    assert rows[0]["params"] > rows[1]["params"]     # a quarter of nnU-Net's widths
    table = format_table(rows).splitlines()
    assert table[0].startswith("| network | params (M) | GMACs | train s/iter")
    assert len(table) == 4 and table[2].startswith(f"| {NNUNET_TITLE} |") and "(1.00×)" in table[2]
    assert table[3].startswith("| small_unet |") and "×)" in table[3]


def test_failed_network_gets_an_error_row():
    # 18 is not divisible by the total stride the planner picks for it: the row says so, no crash
    rows = benchmark([], patch_size=(18, 16, 16), repeats=1, warmup=0, threads=1)
    assert rows[0]["arch"] == NNUNET and "divisible" in rows[0]["error"]
    assert "error:" in format_table(rows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        benchmark(["nope"])
    with pytest.raises(ValueError, match="repeats"):
        benchmark([], repeats=0)
