"""Side-by-side cost of every registered network and stock nnU-Net's default U-Net on one plan.

For each network, on the plan nnU-Net's planner derives for the patch (:meth:`PlanSpec.from_patch`):

- ``params``: parameters (``params_inference`` leaves out training-only modules);
- ``macs``: multiply-accumulates of one forward of one patch (:mod:`nnunet_ext.bench.counts`);
- ``train_s``: seconds per training iteration as nnU-Net's ``train_step`` does it: forward with
  deep supervision, nnU-Net's DC+CE loss over the outputs (weights 1/2^i, the lowest output's 0),
  backward, gradient clipping at 12, SGD (lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5);
  autocast + GradScaler on CUDA, plain fp32 on CPU, as nnU-Net;
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
fails (plan not divisible, out of memory) gets a row with ``error`` instead of numbers. Adding a network needs nothing here: every
registered architecture except ``small_unet`` is benchmarked by default.

nnU-Net's network (:data:`NNUNET`) is built by nnU-Net's own ``get_network_from_plans`` with the
``arch_kwargs`` its default ``ExperimentPlanner`` writes into ``nnUNetPlans.json`` for that patch.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from nnunet_ext.bench.harness import run_isolated_rows, seconds_per_call
from nnunet_ext.bench.memory import PeakMemory

#: stock nnU-Net's default network (PlainConvUNet, trained by nnUNetTrainer): its name in ``--archs`` and
#: in the rows, and its title in tables and progress lines
NNUNET = "nnunet"
NNUNET_TITLE = "nnU-Net (PlainConvUNet)"
#: registered networks left out by default (the spine's test network)
DEFAULT_EXCLUDE = ("small_unet",)
#: what each row carries when the network ran
ROW_KEYS = ("arch", "params", "params_inference", "macs", "train_s", "infer_s", "peak_train_mib",
            "peak_infer_mib", "strides", "device", "device_name", "threads")
_MIB = 2 ** 20

# nnU-Net's default ExperimentPlanner (experiment_planners/default_experiment_planner.py, 3D):
# UNet_base_num_features, UNet_max_features_3d, UNet_blocks_per_stage_encoder/_decoder
_NNUNET_BASE_FEATURES, _NNUNET_MAX_FEATURES, _NNUNET_CONVS_PER_STAGE = 32, 320, 2


def nnunet_arch_kwargs(patch_size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """The ``architecture`` entry nnU-Net's default planner writes for a 3D patch and spacing.

    Strides and kernel sizes come from nnU-Net's own topology function (the one
    :meth:`PlanSpec.from_patch` uses); widths double from 32 up to 320; two convolutions per stage.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, _, _ = get_pool_and_conv_props(list(spacing), list(patch_size), 4, 999999)
    n = len(strides)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": [min(_NNUNET_MAX_FEATURES, _NNUNET_BASE_FEATURES * 2 ** i) for i in range(n)],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [list(k) for k in kernels],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [_NNUNET_CONVS_PER_STAGE] * n,
            "n_conv_per_stage_decoder": [_NNUNET_CONVS_PER_STAGE] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def build_benchmark_network(name: str, spec, input_channels: int, num_classes: int, deep_supervision: bool = True):
    """``name`` is :data:`NNUNET` or a registered architecture."""
    from nnunet_ext.architectures import build_network

    if name == NNUNET:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        spec.check_divisible(spec.total_stride, NNUNET_TITLE)
        a = nnunet_arch_kwargs(spec.patch_size, spec.spacing)
        return get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                                      input_channels, num_classes, allow_init=True, deep_supervision=deep_supervision)
    return build_network(name, spec, input_channels, num_classes, deep_supervision)


def _set_deep_supervision(net, enabled: bool) -> None:
    """Our networks expose ``deep_supervision``; nnU-Net's U-Nets keep it on ``decoder``."""
    if hasattr(net, "deep_supervision"):
        net.deep_supervision = enabled
    decoder = getattr(net, "decoder", None)
    if decoder is not None and hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = enabled


def _nnunet_loss(n_outputs: int):
    """nnU-Net's ``_build_loss`` for label (not region) training with deep supervision."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    weights = [1 / 2 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return DeepSupervisionWrapper(loss, [w / total for w in weights])


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

    net = build_benchmark_network(name, spec, input_channels, num_classes, deep_supervision=True).to(dev)

    # ---- inference: one patch, eval mode, no deep supervision
    net.eval()
    _set_deep_supervision(net, False)
    x1 = torch.randn(1, input_channels, *spec.patch_size, device=dev)

    def infer():
        with torch.no_grad(), autocast():
            net(x1)

    infer_s, peak_infer = phase(infer)
    x1 = None  # free the inference input before training

    # ---- training: nnU-Net's train_step
    net.train()
    _set_deep_supervision(net, True)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    x = torch.randn(batch, input_channels, *spec.patch_size, device=dev)
    seg = torch.randint(0, num_classes, (batch, 1, *spec.patch_size), device=dev).float()
    state = {}

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = net(x)
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            if "targets" not in state:  # nnU-Net's loader down-samples the target to every output
                state["targets"] = [F.interpolate(seg, size=o.shape[2:], mode="nearest") for o in out]
                state["loss"] = _nnunet_loss(len(out))
            loss = state["loss"](out, state["targets"])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            opt.step()

    train_s, peak_train = phase(train_step)

    # ---- counts (after the timings, so the meta-device build cannot touch the memory peaks)
    params = count_parameters(net)
    params_inference = count_parameters(net, inference=True)
    try:
        with torch.device("meta"):
            meta_net = build_benchmark_network(name, spec, input_channels, num_classes, deep_supervision=False)
        macs = count_macs(meta_net, (1, input_channels, *spec.patch_size))
    except Exception:  # an op without a meta kernel: count on the real network instead
        _set_deep_supervision(net, False)
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
    """Every registered architecture except :data:`DEFAULT_EXCLUDE`."""
    from nnunet_ext.architectures import available_architectures
    return [a for a in available_architectures() if a not in DEFAULT_EXCLUDE]


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

