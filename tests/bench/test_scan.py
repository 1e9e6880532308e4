"""The scan benchmark: its comparators compute the scan, a measurement, the table and the command."""

import pytest
import torch

from nnunet_ext.bench import scan as bm
from nnunet_ext.cli.main import main
from nnunet_ext.ops.reference import selective_scan_sequential


def _close(ours, ref, what):
    err = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    assert err <= 1e-4 * scale, f"{what}: max abs error {err:.3g} > 1e-4 x max |ref| {scale:.3g}"


def test_comparators_compute_the_same_scan():
    """The stand-in loop reference and the mambapy wrapper equal the sequential reference."""
    args = {k: v.detach() for k, v in bm.make_inputs(2, 3, 4, 19, seed=21).items()}
    ref = selective_scan_sequential(**args, delta_softplus=True)
    _close(bm.loop_reference(**args, delta_softplus=True), ref, "loop_reference")
    pytest.importorskip("mambapy")
    _close(bm.mambapy_scan(**args, delta_softplus=True), ref, "mambapy")


def test_measure_in_process_and_the_table():
    rows = [bm.measure(1, 4, 4, 40, m, repeats=1) for m in ("torch", "torch@8", "reference", "cuda")]
    for r in rows[:3]:
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["runs"] == 1, r
        assert r["threads"] == torch.get_num_threads()
    assert rows[3]["note"] == "skipped: CUDA only" and "fwd_ms" not in rows[3]
    bm._add_ratios(rows)
    assert rows[0]["speedup_vs_reference_fwd_bwd"] == round(rows[2]["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"], 2)
    table = bm.format_table(rows)
    assert "torch (ours, T=8)" in table and "notes:" in table and "skipped: CUDA only" in table


def test_benchmark_scan_runs_each_method_in_a_worker():
    seen = []
    rows = bm.benchmark_scan([(1, 4, 4, 32), (1, 4, 4, 64)], ("torch", "reference"), repeats=1, threads=1,
                             reference_max_length=48, progress=seen.append)
    assert seen == rows and [(r["L"], r["method"]) for r in rows] == [(32, "torch"), (32, "reference"),
                                                                      (64, "torch"), (64, "reference")]
    torch32, reference32, torch64, reference64 = rows
    for r in (torch32, reference32, torch64):
        assert r["threads"] == 1 and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and "note" not in r, r
        assert r["extra_peak_mb"] >= 0
    assert torch32["speedup_vs_reference_fwd_bwd"] == round(reference32["fwd_bwd_ms"] / torch32["fwd_bwd_ms"], 2)
    assert reference64["note"].startswith("skipped: L > 48") and "speedup_vs_reference_fwd_bwd" not in torch64


def test_command_prints_the_table(capsys):
    assert main(["benchmark-scan", "--lengths", "16", "--channels", "4", "--state", "4", "--backends", "torch",
                 "--repeats", "1", "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith("selective scan on cpu, 1 thread(s); times are means of 1 runs")
    assert lines[1].split() == ["B", "E", "N", "L", "method", "fwd", "ms", "fwd+bwd", "ms", "extra", "peak", "MB",
                                "runs", "×", "mambapy", "fwd", "×", "mambapy", "f+b", "×", "reference", "f+b"]
    assert lines[3].split()[:4] == ["1", "4", "4", "16"] and "torch (ours, blocked" in lines[3]
    assert "B1 E4 N4 L16 torch: fwd " in out.err
