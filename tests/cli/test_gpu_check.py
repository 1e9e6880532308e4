"""``nnunet-ext gpu-check``: the dry run runs the whole check on the CPU at tiny sizes (every section,
every row, finite numbers, one table); without a GPU the full check stops with one line."""

import json
import math

import pytest
import torch

from nnunet_ext.architectures import available_architectures, get_architecture
from nnunet_ext.bench.gpu_check import COLUMNS, DRY_RUN, SECTIONS, paper_networks
from nnunet_ext.cli.main import main
from nnunet_ext.ops import backends


def _numbers(obj, path="report"):
    """Every number in a JSON value, with where it is."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


def test_dry_run_checks_everything_on_the_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    out = tmp_path / "gpu_check.json"
    assert main(["gpu-check", "--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["ok"] is True and report["failed"] == []
    assert all(report[s] for s in SECTIONS)
    bad = [(p, v) for p, v in _numbers(report) if not math.isfinite(v)]
    assert not bad, bad

    # which back-end auto picks, and why
    choice = {(r["device"], r["op"]): r for r in report["backend_choice"]}
    assert set(choice) == {("cpu", "scan"), ("cpu", "conv")}
    for r in choice.values():
        assert r["status"] == "ok" and r["chosen"] == r["available"][0] and r["reason"]
    assert choice[("cpu", "conv")]["chosen"] == "torch"

    # every scan back-end has a row; the GPU kernels (cuda, triton) say why they are skipped, the others ran
    scan = {r["backend"]: r for r in report["scan"]}
    assert set(scan) == {b for b in backends.BACKENDS if b != "auto"}
    assert scan["cuda"]["status"] == "skipped" and "CUDA" in scan["cuda"]["reason"]
    assert scan["triton"]["status"] == "skipped" and "needs CUDA tensors" in scan["triton"]["reason"]
    ran = [r for r in scan.values() if r["status"] == "ok"]
    assert scan["torch"] in ran and (scan["fused"] in ran) == (backends.fused_scan() is not None)
    for r in ran:
        assert r["shape"] == list(DRY_RUN.scan_shape) and r["check_length"] == DRY_RUN.check_length
        assert r["fwd_error"] < 1e-3 and r["bwd_error"] < 1e-3 and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
        assert r["tokens_per_s"] > 0 and (r["diff_vs_torch"] is None) == (r["backend"] == "torch")

    # every paper network: timed, measured, trained with finite losses
    nets = {r["arch"]: r for r in report["networks"]}
    amp = {r["arch"]: r for r in report["amp_training"]}
    assert list(nets) == list(amp) == paper_networks()
    assert sorted(nets) == available_architectures(paper_network=True)
    for arch in nets:
        r, a = nets[arch], amp[arch]
        assert r["status"] == "ok", r
        assert r["train_s"] > 0 and r["infer_s"] > 0 and r["params"] > 0
        assert r["peak_train_mib"] >= 0 and r["peak_infer_mib"] >= 0
        assert r["estimated_train_mib"] > r["params"] * 4 * 3 / 2 ** 20  # weights, gradients, momentum at least
        assert (r["scan_backend"] is not None) == get_architecture(arch).uses_scan
        assert a["status"] == "ok" and a["steps"] == len(a["losses"]) == DRY_RUN.steps
        assert a["losses_finite"] and a["params_finite"] and a["autocast"] == "bfloat16"
    assert nets["segmamba"]["paper_train_mb"] == 17976 and nets["segmamba"]["paper_infer_mb"] == 6279

    # one table: a heading, the columns, one line per row of the report
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(COLUMNS) + " |"
    assert len(table) == 2 + sum(len(report[s]) for s in SECTIONS)
    assert "all checks passed" in printed and "(paper 17976 MB)" in printed and str(out) in printed


def test_without_a_gpu_the_full_check_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu_check.json"
    with pytest.raises(SystemExit) as e:
        main(["gpu-check", "--out", str(out)])
    message = str(e.value)
    assert message.startswith("nnunet-ext gpu-check: torch sees no CUDA device") and "\n" not in message
    assert "nnunet-ext gpu-check --dry-run" in message and "GPU machine" in message
    assert not out.exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--networks", "segmamba", "nope"], "--networks: unknown network(s) nope; known: "),
    (["--out", "no/such/folder/report.json"], "--out no/such/folder/report.json: give a file in an existing folder"),
])
def test_bad_arguments_stop_with_one_line(tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["gpu-check", "--dry-run", *argv])
    assert str(e.value).startswith("nnunet-ext gpu-check: ") and fragment in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_scan_back_end_fails_its_row(monkeypatch):
    """The scan rows judge: a back-end off by 1 % of the output's scale is a failure, not a number."""
    import importlib

    from nnunet_ext.bench import gpu_check

    ss = importlib.import_module("nnunet_ext.ops.selective_scan")
    right = ss.selective_scan_torch
    monkeypatch.setattr(ss, "selective_scan_torch", lambda *a, **k: right(*a, **k) * 1.01)
    rows = {r["backend"]: r for r in gpu_check.scan_rows(DRY_RUN)}
    assert rows["torch"]["status"] == "fail" and "error above 0.001" in rows["torch"]["reason"]
    assert rows["torch"]["fwd_error"] > 1e-3


def test_a_non_finite_loss_fails_the_amp_check():
    """The AMP rows judge: a trainer whose loss is NaN fails, naming why."""
    from nnunet_ext.bench import gpu_check
    from nnunet_ext.trainers import MISSUTrainer

    class NaNLossTrainer(MISSUTrainer):
        def _build_loss(self):
            loss = super()._build_loss()
            return lambda output, target: loss(output, target) * float("nan")

    net, amp = gpu_check.network_rows("missu", DRY_RUN, lambda arch: NaNLossTrainer)
    assert net["status"] == "ok" and amp["status"] == "fail" and amp["reason"] == "non-finite loss"
    assert not amp["losses_finite"] and len(amp["losses"]) == DRY_RUN.steps


def test_backend_choice_says_why_triton_runs_instead_of_mamba_ssm(monkeypatch):
    """On a GPU without mamba-ssm, 'auto' picks the Triton scan and the row names what was passed over."""
    import sys
    import types

    from nnunet_ext.bench import gpu_check

    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "causal_conv1d")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)
    fake = types.ModuleType("nnunet_ext.ops.scan_triton")
    fake.INTERPRET = False
    monkeypatch.setitem(sys.modules, "nnunet_ext.ops.scan_triton", fake)
    monkeypatch.setattr(backends, "_run_triton_probe", lambda mod, dev: None)
    try:
        rows = {(r["device"], r["op"]): r for r in gpu_check.backend_choice("cuda")}
    finally:
        backends.clear_cache()
    scan = rows[("cuda", "scan")]
    assert scan["chosen"] == "triton" and scan["available"] == ["triton", "torch"]
    assert scan["reason"].startswith("our Triton kernel runs; mamba-ssm's kernel (faster) cannot: mamba-ssm is not "
                                     "installed") and 'pip install --no-build-isolation mamba-ssm' in scan["reason"]
    conv = rows[("cuda", "conv")]
    assert conv["chosen"] == "torch" and "causal-conv1d is not installed" in conv["reason"]


def test_a_cuda_network_row_shows_the_plan_estimate_beside_the_measured_peak():
    from nnunet_ext.bench.gpu_check import _table_row

    row = {"arch": "segmamba", "trainer": "SegMambaTrainer", "device": "cuda", "status": "ok", "scan_backend": "cuda",
           "params": 67e6, "train_s": 0.9, "infer_s": 0.2, "peak_train_mib": 20000.0, "peak_infer_mib": 6000.0,
           "estimated_train_mib": 19000.0}
    memory = _table_row("networks", row)[COLUMNS.index("memory")]
    assert memory.endswith("; plan estimate 19000 MiB (0.95× measured)")
    # on the CPU (dry run: bfloat16 autocast, resident set) the float16 estimate is not compared
    assert "estimate" not in _table_row("networks", {**row, "device": "cpu"})[COLUMNS.index("memory")]
