"""``nnunet-ext gpu-check``: what the first machine with a GPU has to show, in one run of a few minutes.

Sections of the report (:func:`run_check`; each is a list of rows in the JSON):

- ``backend_choice``: for each device kind and op (scan, conv), the back-end ``auto`` picks and
  why -- the reason and fix of :mod:`nnunet_ext.ops.backends`' ``SlowBackendWarning`` when it
  falls back to ``torch``, why mamba-ssm's kernel was passed over when our Triton kernel runs
  instead (order on CUDA: cuda -> triton -> torch), or that nothing faster is missing.
- ``scan``: every back-end of :data:`nnunet_ext.ops.backends.BACKENDS` (``fused`` on CPU tensors,
  the others -- ``cuda``, ``triton``, ``torch`` -- on the check's device; in the CPU dry run the two
  GPU kernels are ``skipped`` rows) on SegMamba's call (z gate, D, delta_bias, softplus):
  forward and gradient error against the sequential reference computed in float64 on the CPU
  (largest absolute difference over the largest reference magnitude, at ``check_length``
  tokens), then forward and forward+backward time at ``scan_shape`` (B 1, E 96, N 16, L 262 144:
  SegMamba's first stage at a 128³ patch) and the output's difference there from the ``torch``
  back-end's. A back-end that cannot run here is a ``skipped`` row saying why.
- ``triton_compile``: every Triton scan kernel specialisation compiled for this GPU's architecture
  (:func:`nnunet_ext.bench.triton_compile.gpu_check_rows`: registers, spills, shared memory per
  kernel x N, with the driver's counts of the loaded kernel); ``skipped`` in the dry run.
- ``networks``: each paper network (the registry's ``paper_network`` flag) built by its own nnU-Net
  trainer (:func:`nnunet_ext.trainers.step.step_trainer`) from the synthetic plan of ``patch`` with ``input_channels``
  and ``num_classes``. Inference first (eval mode, full-resolution output, one patch, ``no_grad`` under
  autocast): seconds per patch and peak memory. Then ``steps`` training steps with the trainer's
  own loss (nnU-Net's DC+CE with deep supervision; MISSU's adds its self-distillation term),
  optimizer (SGD, momentum 0.99, Nesterov) and AMP: the trainer's own ``train_step`` -- on CUDA
  autocast float16 + GradScaler, in the CPU dry run under bfloat16 autocast:
  seconds per step (median after the warm-up steps) and peak memory. Memory is the peak above the
  usage before the trainer was built (weights included): on CUDA ``torch.cuda.max_memory_allocated``
  (tensors only; ``torch.cuda.max_memory_reserved`` is in the JSON), on CPU the peak resident set.
  SegMamba's row carries its paper's figures (:data:`PAPER_MEMORY_MB`). Beside the measured
  training peak, the estimate ``nnunet-ext plan`` sizes plans with
  (:func:`~nnunet_ext.planning.estimate.estimate_training_memory`, mixed precision, the CUDA scan
  kernel's memory) for the same trainer and plan, and on CUDA their ratio.
- ``amp_training``: the same steps judged: every loss finite, every parameter finite afterwards,
  and not every step skipped by the GradScaler (a skipped step is one whose scale went down).

Torch.compile is off for all trainers here: compiling would take most of the
time budget. The run stops starting new measurements once ``budget_s`` seconds have passed; what
it leaves out is a ``skipped`` row.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from nnunet_ext.architectures import get_architecture
from nnunet_ext.bench.memory import PeakMemory
from nnunet_ext.ops import backends, selective_scan
from nnunet_ext.ops.reference import selective_scan_sequential

#: published GPU memory, in MB as printed by the paper
PAPER_MEMORY_MB = {"segmamba": {"train": 17976, "infer": 6279, "source": "Xing et al. 2024, Table 5"}}
#: largest error (relative to the reference's largest magnitude) a scan back-end may have
SCAN_TOLERANCE = 1e-3
SECTIONS = ("backend_choice", "scan", "triton_compile", "networks", "amp_training")
#: seconds after which the full check starts no new measurement (it is meant to end within 5 minutes)
BUDGET_S = 280.0
_MIB = 2 ** 20


@dataclass(frozen=True)
class Sizes:
    """What the check runs at."""
    device: str
    amp_dtype: str              # autocast dtype of the network runs
    patch: tuple[int, int, int]
    batch: int
    input_channels: int
    num_classes: int
    steps: int                  # AMP training steps per network
    warmup_steps: int           # of those, left out of the step time
    infer_warmup: int           # untimed inference passes first
    infer_repeats: int          # timed inference passes (their median is reported)
    scan_shape: tuple[int, int, int, int]   # (B, E, N, L) of the throughput measurement
    check_length: int           # L of the accuracy check against the reference
    scan_repeats: int


#: a GPU machine: SegMamba's setting (BraTS: 4 modalities, 128³ patches, batch 2)
FULL = Sizes(device="cuda", amp_dtype="float16", patch=(128, 128, 128), batch=2, input_channels=4, num_classes=4,
             steps=20, warmup_steps=2, infer_warmup=1, infer_repeats=3, scan_shape=(1, 96, 16, 262144),
             check_length=4096,
             scan_repeats=3)
#: ``--dry-run``: the whole check on the CPU at tiny sizes
DRY_RUN = Sizes(device="cpu", amp_dtype="bfloat16", patch=(16, 16, 16), batch=2, input_channels=4, num_classes=4,
                steps=2, warmup_steps=1, infer_warmup=0, infer_repeats=1, scan_shape=(1, 96, 16, 1024),
                check_length=128,
                scan_repeats=1)


def paper_networks() -> list[str]:
    """The registry's paper networks, those that call the selective scan first."""
    from nnunet_ext.architectures import available_architectures

    return sorted(available_architectures(paper_network=True), key=lambda a: not get_architecture(a).uses_scan)


def run_check(trainer_for: Callable[[str], type] | None = None, dry_run: bool = False,
              networks: Sequence[str] | None = None,
              budget_s: float | None = None, progress: Callable[[str, dict], None] | None = None) -> dict:
    """Run every section; returns the report (JSON-ready).

    ``trainer_for(arch)`` gives the nnU-Net trainer class that trains registry network ``arch`` (default:
    :func:`nnunet_ext.trainers.step.trainer_of`); ``networks`` default to :func:`paper_networks`.
    ``progress(section, row)`` is called after each row. Raises ``RuntimeError`` when the full
    check is asked for without a CUDA device.
    """
    sizes = DRY_RUN if dry_run else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device; run the check with dry_run=True or on a GPU machine")
    networks = tuple(networks or paper_networks())
    budget_s = (None if dry_run else BUDGET_S) if budget_s is None else budget_s
    start = time.perf_counter()

    def over_budget() -> str | None:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            return f"time budget of {budget_s:g} s used up; run it alone with --networks"
        return None

    def emit(section: str, row: dict) -> dict:
        report[section].append(row)
        if progress:
            progress(section, row)
        return row

    report = {"dry_run": dry_run, "sizes": asdict(sizes), "environment": environment(sizes.device),
              **{s: [] for s in SECTIONS}}
    cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as nnUNetv2_train
    try:
        for row in backend_choice(sizes.device):
            emit("backend_choice", row)
        for row in scan_rows(sizes, over_budget):
            emit("scan", row)
        from nnunet_ext.bench import triton_compile  # every Triton kernel compiled for this GPU's architecture
        for row in triton_compile.gpu_check_rows(sizes.device):
            emit("triton_compile", row)
        for arch in networks:
            why = over_budget()
            if why:
                emit("networks", {"arch": arch, "status": "skipped", "reason": why})
                emit("amp_training", {"arch": arch, "status": "skipped", "reason": why})
                continue
            net_row, amp_row = network_rows(arch, sizes, trainer_for)
            emit("networks", net_row)
            emit("amp_training", amp_row)
    finally:
        torch.backends.cudnn.benchmark = cudnn
    report["elapsed_s"] = time.perf_counter() - start
    report["failed"] = [f"{s}: {row_subject(r)}" for s in SECTIONS for r in report[s] if r["status"] == "fail"]
    report["ok"] = not report["failed"]
    return report


# ---------------------------------------------------------------------------------------------
# environment and back-end choice
# ---------------------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    cuda = device == "cuda"
    return {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
            "threads": torch.get_num_threads(),
            **{dist: _version(dist) for dist in ("nnunetv2", "mamba-ssm", "causal-conv1d", "numba", "triton")},
            backends.ENV_VAR: os.environ.get(backends.ENV_VAR)}


def backend_choice(device: str) -> list[dict]:
    """What ``auto`` (or the environment variable) picks per device kind and op, and why."""
    requested = backends.requested_backend()
    kinds = ["cuda", "cpu"] if device == "cuda" else ["cpu"]
    # forget the probes and the once-per-process warnings, so that the reason is seen here
    backends.clear_cache()
    rows = []
    for kind in kinds:
        for op in ("scan", "conv"):
            row = {"device": kind, "op": op, "requested": requested,
                   "available": backends.available_backends(kind, op), "status": "ok"}
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                try:
                    row["chosen"] = backends.resolve_backend(torch.device(kind), op=op)
                except backends.BackendUnavailableError as e:
                    row.update(chosen=None, status="fail", reason=str(e))
            slow = [str(w.message) for w in seen if issubclass(w.category, backends.SlowBackendWarning)]
            if "reason" not in row and row["chosen"] == "triton" and requested == "auto":
                why = backends.why_unavailable("cuda", op=op)
                row["reason"] = ("our Triton kernel runs; mamba-ssm's kernel (faster) cannot: "
                                 f"{why.reason}. Fix: {why.fix}" if why is not None else "our Triton kernel runs")
            if "reason" not in row:
                row["reason"] = (slow[0] if slow else
                                 f"forced by {backends.ENV_VAR}={requested}" if requested != "auto" else
                                 f"the fastest back-end for {kind} tensors is available")
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# the selective scan back-ends
# ---------------------------------------------------------------------------------------------

def scan_inputs(b: int, e: int, n: int, length: int, seed: int = 0) -> dict:
    """SegMamba-like arguments of the scan, float32 on the CPU: Δ before softplus around
    softplus⁻¹(0.02), A = -(1..N) per channel (S4D-real), D = 1, a gate z and a delta_bias."""
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(b, e, length, generator=g), delta=torch.randn(b, e, length, generator=g) * 0.5 - 4.0,
                A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1),
                B=torch.randn(b, n, length, generator=g), C=torch.randn(b, n, length, generator=g),
                D=torch.ones(e), z=torch.randn(b, e, length, generator=g),
                delta_bias=torch.rand(e, generator=g) * 0.1)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _scan_call(name: str | Callable, inputs: dict, device, grad_out: torch.Tensor | None):
    """y (and the input gradients when ``grad_out`` is given) of back-end ``name`` (or of the scan
    function ``name``) on ``device``."""
    scan = name if callable(name) else lambda **kw: selective_scan(**kw, backend=name)
    leaves = {k: v.detach().to(device).requires_grad_(grad_out is not None) for k, v in inputs.items()}
    with torch.set_grad_enabled(grad_out is not None):
        y = scan(**leaves, delta_softplus=True)
        if grad_out is None:
            return y.detach(), None
        y.backward(grad_out.to(device=device, dtype=y.dtype))
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.double().cpu()
    scale = reference.abs().max().item() or 1.0
    return (value.double().cpu() - reference).abs().max().item() / scale


def scan_rows(sizes: Sizes, over_budget: Callable[[], str | None] = lambda: None) -> list[dict]:
    b, e, n, length = sizes.scan_shape
    check = scan_inputs(b, e, n, sizes.check_length, seed=1)
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(b, e, sizes.check_length, generator=g)
    # the reference: the sequential loop in float64 on the CPU
    reference_y, reference_grads = _scan_call(selective_scan_sequential, {k: v.double() for k, v in check.items()},
                                              "cpu", grad_out.double())
    long_inputs = scan_inputs(b, e, n, length, seed=3)
    long_grad = torch.randn(b, e, length, generator=g)
    torch_long = {}  # device -> the torch back-end's long output (the cross-check of the others)
    rows = []
    names = [nm for nm in backends.BACKENDS if nm != "auto"]
    # torch first: the others' long outputs are compared with its
    for name in sorted(names, key=lambda nm: nm != "torch"):
        device = "cpu" if name == "fused" else sizes.device
        row = {"backend": name, "device": device, "shape": [b, e, n, length], "check_length": sizes.check_length}
        t0 = time.perf_counter()
        why = over_budget() or _unavailable(name, device)
        if why:
            rows.append({**row, "status": "skipped", "reason": why})
            continue
        try:
            y, grads = _scan_call(name, check, device, grad_out)
            row["fwd_error"] = _relative_error(y, reference_y)
            row["bwd_error"] = max(_relative_error(grads[k], reference_grads[k]) for k in reference_grads)
            # timed on the device's own copies (no host-to-device transfer inside the clock)
            long_dev = {k: v.to(device) for k, v in long_inputs.items()}
            grad_dev = long_grad.to(device)
            long_y = _scan_call(name, long_dev, device, None)[0]
            row["fwd_ms"] = 1e3 * _median_seconds(lambda: _scan_call(name, long_dev, device, None), device,
                                                  sizes.scan_repeats)
            row["fwd_bwd_ms"] = 1e3 * _median_seconds(lambda: _scan_call(name, long_dev, device, grad_dev),
                                                      device, sizes.scan_repeats)
            long_dev = grad_dev = None
            row["tokens_per_s"] = b * length / (row["fwd_bwd_ms"] / 1e3)
            if name == "torch":
                torch_long[device] = long_y.cpu()
            base = torch_long.get(device, next(iter(torch_long.values()), None))
            row["diff_vs_torch"] = None if name == "torch" or base is None else _relative_error(long_y, base)
            errors = [row["fwd_error"], row["bwd_error"]] + ([row["diff_vs_torch"]] if row["diff_vs_torch"] is not None
                                                             else [])
            good = all(math.isfinite(v) and v <= SCAN_TOLERANCE for v in errors)
            row["status"] = "ok" if good else "fail"
            if not good:
                row["reason"] = f"error above {SCAN_TOLERANCE:g} of the reference's largest value"
        except Exception as ex:  # one back-end failing must not hide the others
            row.update(status="fail", reason=f"{type(ex).__name__}: {' '.join(str(ex).split())[:300]}")
        finally:
            _free(device)
            row["elapsed_s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def _unavailable(name: str, device: str) -> str | None:
    """Why back-end ``name`` cannot run on ``device`` here, else None."""
    if device == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA device"
    if name == "cuda" and device != "cuda":
        return "needs CUDA tensors (the dry run is on the CPU)"
    if name == "triton" and device != "cuda":
        return ("needs CUDA tensors (the dry run is on the CPU; on CPU tensors the Triton kernels run only in "
                "Triton's interpreter, far too slowly for these sizes: tests/ops/test_scan_triton.py checks them "
                "that way at tiny sizes)")
    try:
        backends.resolve_backend(torch.device(device), name)
    except (backends.BackendUnavailableError, ValueError) as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------
# the networks, through their own trainers
# ---------------------------------------------------------------------------------------------

def _step(trainer, batch: dict, sizes: Sizes) -> float:
    """One step of the trainer's own ``train_step``; returns the loss. CUDA: as nnU-Net runs it
    (autocast float16 + GradScaler). CPU: under CPU autocast in ``sizes.amp_dtype`` (nnU-Net itself
    trains in float32 on the CPU)."""
    with torch.autocast("cpu", dtype=getattr(torch, sizes.amp_dtype)) if sizes.device == "cpu" \
            else contextlib.nullcontext():
        return float(trainer.train_step(batch)["loss"])


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def estimated_training_mib(trainer, batch: int) -> float:
    """The planner's estimate (MiB) of one mixed-precision training step of ``trainer``'s network on
    its plan at ``batch`` (fake tensors on the CPU: no device memory)."""
    from nnunet_ext.planning.estimate import estimate_training_memory

    estimate = estimate_training_memory(type(trainer), trainer.plans_manager, trainer.configuration_manager,
                                        trainer.dataset_json, batch_size=batch, precision="amp")
    return estimate.total / _MIB


def network_rows(arch: str, sizes: Sizes, trainer_for: Callable[[str], type] | None = None) -> tuple[dict, dict]:
    """(``networks`` row, ``amp_training`` row) of one network, trained by ``trainer_for(arch)``
    (default its registered trainer) set up by :func:`nnunet_ext.trainers.step.step_trainer` from
    the synthetic plan of ``sizes.patch``."""
    from nnunet_ext.architectures.plans import synthetic_dataset_json, synthetic_plans
    from nnunet_ext.trainers.step import step_trainer, synthetic_batch, trainer_of

    dev = torch.device(sizes.device)
    cuda = dev.type == "cuda"
    amp = getattr(torch, sizes.amp_dtype)
    row = {"arch": arch, "trainer": get_architecture(arch).trainer, "device": dev.type, "scan_backend": None}
    paper = PAPER_MEMORY_MB.get(arch)
    if paper:
        row.update(paper_train_mb=paper["train"], paper_infer_mb=paper["infer"], paper_source=paper["source"])
    amp_row = {"arch": arch, "device": dev.type, "autocast": sizes.amp_dtype, "grad_scaler": cuda}
    trainer = batch = None
    start = time.perf_counter()
    try:
        if get_architecture(arch).uses_scan:
            row["scan_backend"] = backends.resolve_backend(dev)
        _free(dev)
        memory = PeakMemory(dev)
        plans = synthetic_plans(sizes.patch, batch_size=sizes.batch, input_channels=sizes.input_channels)
        trainer = step_trainer((trainer_for or trainer_of)(arch), plans,
                               synthetic_dataset_json(sizes.input_channels, sizes.num_classes), dev)
        net = trainer.network
        row["params"] = sum(p.numel() for p in net.parameters())

        # inference: one patch, eval mode, full-resolution output only, no autograd, autocast
        net.eval()
        trainer.set_deep_supervision_enabled(False)
        x1 = torch.randn(1, sizes.input_channels, *sizes.patch, device=dev)

        def infer():
            with torch.no_grad(), torch.autocast(dev.type, dtype=amp):
                net(x1)

        memory.reset()
        row["infer_s"] = _median_seconds(infer, dev, sizes.infer_repeats, sizes.infer_warmup)
        row["peak_infer_mib"] = memory.above_baseline() / _MIB
        x1 = None

        # training: the trainer's loss and optimizer, nnU-Net's AMP step
        net.train()
        trainer.set_deep_supervision_enabled(True)
        batch = synthetic_batch(trainer, sizes.batch)
        memory.reset()
        losses, times, skipped = [], [], 0
        scaler = trainer.grad_scaler
        for _ in range(sizes.steps):
            scale = scaler.get_scale() if scaler is not None else None
            _sync(dev)
            t0 = time.perf_counter()
            losses.append(_step(trainer, batch, sizes))
            _sync(dev)
            times.append(time.perf_counter() - t0)
            if scaler is not None and scaler.get_scale() < scale:
                skipped += 1
        row["train_s"] = statistics.median(times[sizes.warmup_steps:] or times)
        row["peak_train_mib"] = memory.above_baseline() / _MIB
        if cuda:
            row["peak_train_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / _MIB
        row["estimated_train_mib"] = estimated_training_mib(trainer, sizes.batch)
        params_finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
        losses_finite = all(math.isfinite(v) for v in losses)
        amp_row.update(steps=len(losses), losses=losses, losses_finite=losses_finite, params_finite=params_finite,
                       skipped_steps=skipped)
        good = losses_finite and params_finite and skipped < len(losses)
        amp_row["status"] = "ok" if good else "fail"
        if not good:
            amp_row["reason"] = ("non-finite loss" if not losses_finite else
                                 "non-finite parameters after the steps" if not params_finite else
                                 "the GradScaler skipped every step (gradients never finite)")
        row["status"] = "ok"
    except Exception as ex:  # reported in its rows; the other networks still run
        reason = f"{type(ex).__name__}: {' '.join(str(ex).split())[:300]}"
        row.update(status="fail", reason=reason)
        amp_row.setdefault("status", "fail")
        amp_row.setdefault("reason", reason)
    finally:
        trainer = batch = None
        _free(dev)
        row["elapsed_s"] = time.perf_counter() - start
    return row, amp_row


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

COLUMNS = ("check", "subject", "device", "result", "time", "memory", "accuracy / notes")


def row_subject(row: dict) -> str:
    if "op" in row:
        return f"{row['op']} back-end ({row['requested']})"
    return row.get("backend") or row.get("arch", "?")


def _g(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v:.3g}{unit}"


def _rate(per_s: float) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= scale:
            return f"{per_s / scale:.3g} {prefix}tok/s"
    return f"{per_s:.3g} tok/s"


def _table_row(section: str, r: dict) -> list[str]:
    status = r["status"]
    note = r.get("reason", "")
    time_, memory, acc = "", "", note
    if section == "backend_choice":
        status = r["chosen"] or status
        acc = note
    elif section == "scan" and "fwd_ms" in r:
        b, _, _, length = r["shape"]
        time_ = (f"L {length}: fwd {_g(r['fwd_ms'], ' ms')}, fwd+bwd {_g(r['fwd_bwd_ms'], ' ms')} "
                 f"({_rate(r['tokens_per_s'])})")
        acc = (f"vs reference (L {r['check_length']}): fwd {r['fwd_error']:.1e}, bwd {r['bwd_error']:.1e}"
               + (f"; vs torch (L {length}): {r['diff_vs_torch']:.1e}" if r.get("diff_vs_torch") is not None else "")
               + (f"; {note}" if note else ""))
    elif section == "networks" and "train_s" in r:
        time_ = f"train {_g(r['train_s'], ' s')}/step, infer {_g(r['infer_s'], ' s')}/patch"
        paper_t = f" (paper {r['paper_train_mb']} MB)" if "paper_train_mb" in r else ""
        paper_i = f" (paper {r['paper_infer_mb']} MB)" if "paper_infer_mb" in r else ""
        memory = f"train {r['peak_train_mib']:.0f} MiB{paper_t}, infer {r['peak_infer_mib']:.0f} MiB{paper_i}"
        if r.get("estimated_train_mib") is not None and r["device"] == "cuda" and r["peak_train_mib"] > 0:
            memory += (f"; plan estimate {r['estimated_train_mib']:.0f} MiB "
                       f"({r['estimated_train_mib'] / r['peak_train_mib']:.2f}× measured)")
        acc = f"{r['params'] / 1e6:.1f} M params"
        if r["scan_backend"]:
            acc += f"; scan back-end {r['scan_backend']}"
    elif section == "amp_training" and "losses" in r:
        acc = (f"{r['steps']} steps ({r['autocast']} autocast{' + GradScaler' if r['grad_scaler'] else ''}), "
               f"loss {r['losses'][0]:.3g} → {r['losses'][-1]:.3g}, "
               f"losses {'finite' if r['losses_finite'] else 'NOT finite'}, "
               f"parameters {'finite' if r['params_finite'] else 'NOT finite'}"
               + (f", {r['skipped_steps']} step(s) skipped by the GradScaler" if r["grad_scaler"] else "")
               + (f"; {note}" if note else ""))
    return [section.replace("_", " "), row_subject(r), r.get("device", ""), status, time_, memory, acc]


def format_table(report: dict) -> str:
    """One markdown table of every row of the report, with a heading line."""
    s = report["sizes"]
    env = report["environment"]
    head = (f"gpu-check{' --dry-run' if report['dry_run'] else ''} on {env['device']} (torch {env['torch']}, "
            f"mamba-ssm {env['mamba-ssm'] or 'not installed'}, "
            f"causal-conv1d {env['causal-conv1d'] or 'not installed'}): "
            f"networks at {'x'.join(map(str, s['patch']))}, batch {s['batch']}, {s['input_channels']} input channels, "
            f"{s['num_classes']} classes, {s['amp_dtype']} autocast, eager (no torch.compile); memory: "
            + ("peak torch.cuda.max_memory_allocated above the start (paper: MB as published); "
               if s["device"] == "cuda" else "growth of the peak resident set (indicative only: freed memory is "
                                             "reused between networks); ")
            + f"{'FAILED: ' + '; '.join(report['failed']) if not report['ok'] else 'all checks passed'} "
            f"in {report['elapsed_s']:.0f} s")
    lines = [head, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for section in SECTIONS:
        for r in report[section]:
            cells = [c.replace("|", "/").replace("\n", " ") for c in _table_row(section, r)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
