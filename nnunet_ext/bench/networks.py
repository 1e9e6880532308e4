"""Side-by-side cost of every registered network and stock nnU-Net's default U-Net on one plan.

For each network, on the plan nnU-Net's planner derives for the patch (:meth:`PlanSpec.from_patch`):

- ``params``: parameters (``params_inference`` leaves out training-only modules);
- ``macs``: multiply-accumulates of one forward of one patch (:mod:`nnunet_ext.bench.counts`);
- ``train_s``: seconds per training iteration of the network's own trainer: its ``train_step``
  (:mod:`nnunet_ext.trainers.step`; nnU-Net's step with the trainer's loss -- deep-supervision
  weights, MISSU's self-distillation -- gradient clipping at 12 and SGD) on a batch as nnU-Net's
  loader delivers it; autocast + GradScaler on CUDA, plain fp32 on CPU, as nnU-Net;
- ``infer_s``: seconds per patch at inference (eval mode, no deep supervision, ``no_grad``, one
  patch at a time as nnU-Net's sliding window; autocast on CUDA);
- ``peak_train_mib`` / ``peak_infer_mib``: peak memory of each phase above the worker's usage
  right after the imports (and a toy convolution that initialises the conv libraries), so the
  network's weights are included (:class:`~nnunet_ext.bench.memory.PeakMemory`: CUDA
  ``torch.cuda.max_memory_allocated``; CPU the peak resident set, lowered to the current size
  before each phase on Linux, so an import-time spike hides nothing; elsewhere the training
  figure is the peak of the whole run).

Times are the mean of ``repeats`` calls timed by ``torch.utils.benchmark.Timer`` after its two
warm-up calls and ``warmup`` more (:func:`~nnunet_ext.bench.harness.seconds_per_call`). Each
network is measured in a fresh interpreter (:func:`~nnunet_ext.bench.harness.run_isolated`), so
memory peaks and allocator caches do not leak from one network into the next; a network that
fails (plan not divisible, out of memory) gets a row with ``error`` instead of numbers. Adding a
network needs nothing here: every registered paper network is benchmarked by default.

Every network is built by its trainer from one synthetic plan
(:func:`~nnunet_ext.architectures.plans.synthetic_plans`); nnU-Net's network (:data:`NNUNET`, trained
by ``nnUNetTrainer``) from the ``architecture`` entry nnU-Net's default ``ExperimentPlanner`` writes
for that patch.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from nnunet_ext.bench.harness import run_isolated_rows, seconds_per_call
from nnunet_ext.bench.memory import PeakMemory
from nnunet_ext.trainers.step import NNUNET  # stock nnU-Net's network: its name in --archs and in the rows

#: stock nnU-Net's default network's title in tables and progress lines
NNUNET_TITLE = "nnU-Net (PlainConvUNet)"
#: what each row carries when the network ran
ROW_KEYS = ("arch", "params", "params_inference", "macs", "train_s", "infer_s", "peak_train_mib",
            "peak_infer_mib", "strides", "device", "device_name", "threads")
_MIB = 2 ** 20


def _setting(name: str, spec, input_channels: int, num_classes: int, batch: int = 2):
    """(trainer class, plans manager, configuration manager, dataset.json) of ``name`` at ``spec``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.architectures.plans import CONFIGURATION, synthetic_dataset_json, synthetic_plans
    from nnunet_ext.trainers.step import trainer_of

    baseline = name == NNUNET
    if baseline:
        spec.check_divisible(spec.total_stride, NNUNET_TITLE)
    pm = PlansManager(synthetic_plans(spec.patch_size, spec.spacing, strides=spec.strides, batch_size=batch,
                                      input_channels=input_channels))
    return (trainer_of(name), pm, pm.get_configuration(CONFIGURATION),
            synthetic_dataset_json(input_channels, num_classes))


def build_benchmark_network(name: str, spec, input_channels: int, num_classes: int, deep_supervision: bool = True):
    """``name``'s network (:data:`NNUNET` or a registered architecture) for ``spec``,
    built by its trainer from the synthetic plan, on the current default device."""
    from nnunet_ext.trainers.step import build_network

    cls, pm, cm, dataset_json = _setting(name, spec, input_channels, num_classes)
    return build_network(cls, pm, cm, dataset_json, deep_supervision)


def measure(name: str, patch_size: Sequence[int], input_channels: int = 1, num_classes: int = 2, batch: int = 1,
            device: str = "cpu", repeats: int = 3, warmup: int = 0,
            spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """Measure one network in this process (see the module docstring); returns a row of :data:`ROW_KEYS`.

    Call it in a fresh process (:func:`benchmark` does) for a meaningful CPU memory peak.
    """
    import torch
    import torch.nn.functional as F

    from nnunet_ext.architectures import PlanSpec
    from nnunet_ext.bench.counts import count_macs, count_parameters
    from nnunet_ext.trainers.step import step_trainer, synthetic_batch

    spec = PlanSpec.from_patch(patch_size, spacing)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as nnUNetv2_train
    # initialise the conv kernels' libraries on a 4^3 toy before the baseline, so their one-off
    # set-up is not charged to the first network phase
    w = torch.zeros(1, 1, 3, 3, 3, device=dev, requires_grad=True)
    F.conv3d(torch.zeros(1, 1, 4, 4, 4, device=dev), w).sum().backward()
    del w
    memory = PeakMemory(dev)
    torch.manual_seed(0)

    def phase(fn: Callable[[], None]) -> tuple[float, int]:
        """Seconds per call of ``fn`` and the peak memory of the phase."""
        memory.reset()
        return seconds_per_call(fn, repeats, warmup), memory.above_baseline()

    def autocast():
        return torch.autocast("cuda", enabled=True) if cuda else torch.autocast("cpu", enabled=False)

    cls, pm, _, dataset_json = _setting(name, spec, input_channels, num_classes, batch)
    trainer = step_trainer(cls, pm, dataset_json, dev)
    net = trainer.network

    # ---- inference: one patch, eval mode, no deep supervision
    net.eval()
    trainer.set_deep_supervision_enabled(False)
    x1 = torch.randn(1, input_channels, *spec.patch_size, device=dev)

    def infer():
        with torch.no_grad(), autocast():
            net(x1)

    infer_s, peak_infer = phase(infer)
    x1 = None  # free the inference input before training

    # ---- training: the trainer's own train_step
    net.train()
    trainer.set_deep_supervision_enabled(True)
    data = synthetic_batch(trainer, batch)

    def train_step():
        trainer.train_step(data)

    train_s, peak_train = phase(train_step)

    # ---- counts (after the timings, so the meta-device build cannot touch the memory peaks)
    params = count_parameters(net)
    params_inference = count_parameters(net, inference=True)
    try:
        with torch.device("meta"):
            meta_net = build_benchmark_network(name, spec, input_channels, num_classes, deep_supervision=False)
        macs = count_macs(meta_net, (1, input_channels, *spec.patch_size))
    except Exception:  # an op without a meta kernel: count on the real network instead
        trainer.set_deep_supervision_enabled(False)
        macs = count_macs(net, (1, input_channels, *spec.patch_size))

    return {
        "arch": name,
        "params": params, "params_inference": params_inference, "macs": int(macs),
        "train_s": train_s, "infer_s": infer_s,
        "peak_train_mib": peak_train / _MIB, "peak_infer_mib": peak_infer / _MIB,
        "strides": [list(s) for s in spec.strides],
        "device": dev.type, "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "threads": torch.get_num_threads(),
    }


def default_architectures() -> list[str]:
    """Every registered paper network (the registry's ``paper_network`` flag)."""
    from nnunet_ext.architectures import available_architectures
    return available_architectures(paper_network=True)


def benchmark(archs: Sequence[str] | None = None, patch_size: Sequence[int] = (64, 64, 64), input_channels: int = 1,
              num_classes: int = 2, batch: int = 1, device: str = "cpu", repeats: int = 3, warmup: int = 0,
              spacing: Sequence[float] = (1.0, 1.0, 1.0), threads: int | None = None,
              timeout: float | None = None, on_row: Callable[[int, int, dict], None] | None = None) -> list[dict]:
    """Benchmark nnU-Net's network (first row) and ``archs`` (default :func:`default_architectures`).

    Each network runs in its own subprocess (``threads`` torch threads, default this process's).
    ``on_row(i, n, row)`` is called after each network. Raises ``ValueError`` for bad arguments
    (unknown architecture, no CUDA device); a network that fails gets a row with ``error``.
    """
    import torch

    from nnunet_ext.architectures import available_architectures

    archs = default_architectures() if archs is None else [a for a in archs if a != NNUNET]
    unknown = [a for a in archs if a not in available_architectures()]
    if unknown:
        raise ValueError(f"unknown architecture(s) {', '.join(unknown)}; known: "
                         f"{', '.join(available_architectures())} (nnU-Net's own network is always included)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device; use --device cpu")
    for what, v, lo in (("repeats", repeats, 1), ("warmup", warmup, 0), ("batch", batch, 1),
                        ("input_channels", input_channels, 1), ("num_classes", num_classes, 2)):
        if int(v) < lo:
            raise ValueError(f"{what} must be >= {lo}, got {v}")
    configs = [{"name": name, "patch_size": list(patch_size), "input_channels": input_channels,
                "num_classes": num_classes, "batch": batch, "device": device, "repeats": repeats, "warmup": warmup,
                "spacing": list(spacing)}
               for name in (NNUNET, *archs)]
    return run_isolated_rows(measure, configs, threads, timeout, on_row)


# ------------------------------------------------------------------------------------------ table
def network_title(arch: str) -> str:
    """A row's network as tables and progress lines name it: :data:`NNUNET_TITLE` for the baseline,
    else the registered name."""
    return NNUNET_TITLE if arch == NNUNET else arch


def ratio_suffix(v: float, ref: float | None) -> str:
    if ref is None or not ref or not math.isfinite(ref):
        return ""
    return f" ({v / ref:.2f}×)"


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table; each number is followed by its ratio to nnU-Net's network's."""
    baseline = next((r for r in rows if r["arch"] == NNUNET and "error" not in r), None)
    cols = (("params (M)", "params", 1e-6, "{:.2f}"), ("GMACs", "macs", 1e-9, "{:.2f}"),
            ("train s/iter", "train_s", 1, "{:.3g}"), ("infer s/patch", "infer_s", 1, "{:.3g}"),
            ("peak train MiB", "peak_train_mib", 1, "{:.0f}"), ("peak infer MiB", "peak_infer_mib", 1, "{:.0f}"))
    lines = ["| network | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {network_title(r['arch'])} | " + " | ".join("—" for _ in cols[:-1])
                         + f" | error: {r['error']} |")
            continue
        cells = [fmt.format(r[key] * scale) + ratio_suffix(r[key], baseline[key] if baseline else None)
                 for _, key, scale, fmt in cols]
        lines.append(f"| {network_title(r['arch'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

