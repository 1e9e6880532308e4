"""Whole-volume prediction as ``nnUNetv2_predict`` runs it, for every network beside nnU-Net's U-Net.

One volume of ``volume`` voxels (default a 1 mm brain, 160 x 192 x 160) and ``input_channels``
channels (``torch.randn``, as after nnU-Net's z-score normalisation) goes through nnU-Net's own
``nnUNetPredictor.predict_logits_from_preprocessed_data``: padding to the patch, sliding window
with tile step 0.5, gaussian weighting of overlapping tiles, float16 accumulation of the logits,
and with ``mirroring`` nnU-Net's test-time mirroring over all three axes (the network runs on the
tile and its 7 flips, one after another: 8 calls per tile). The network is built from a plan
(random weights, no training) by its trainer: nnU-Net's default plan for ``patch_size``
(:func:`~nnunet_ext.architectures.plans.synthetic_plans`) gives its PlainConvUNet
(:func:`~nnunet_ext.bench.networks.build_benchmark_network`) and the :class:`PlanSpec` our
networks derive their strides from.

Each row (:data:`ROW_KEYS`):

- ``tiles``: tiles of nnU-Net's sliding window over the (padded) volume (the predictor's own slicers);
- ``network_calls``: forward calls of the network during the prediction (a forward pre-hook);
- ``wall_s``: seconds of the whole ``predict_logits_from_preprocessed_data`` call, timed once
  (:func:`~nnunet_ext.bench.harness.seconds_once`; a toy convolution initialises the conv
  libraries first, the rest of a first call's set-up is part of the time, as for a user);
  ``s_per_tile`` = ``wall_s / tiles``;
- ``peak_rss_mib``: peak resident set of the whole worker process during the prediction (weights,
  volume, logits, activations, and the interpreter with torch and nnU-Net imported) -- the memory
  a machine needs to run it; ``peak_mib``: the peak above the worker's usage after the imports
  (:class:`~nnunet_ext.bench.memory.PeakMemory`: on CUDA the allocator's peak, then
  ``peak_rss_mib`` is the host side).

Every measurement runs in a fresh interpreter (:func:`~nnunet_ext.bench.harness.run_isolated`);
a network that fails or runs past the timeout gets a row with ``error``. Nothing is extrapolated:
a mirrored run is either measured or absent.
"""

from __future__ import annotations

from typing import Callable, Sequence

from nnunet_ext.bench.harness import run_isolated_rows, seconds_once
from nnunet_ext.bench.memory import PeakMemory, peak_rss_bytes, reset_peak_rss
from nnunet_ext.bench.networks import (NNUNET, build_benchmark_network, default_architectures, network_title,
                                       ratio_suffix)

#: a 1 mm brain MRI (z, y, x)
DEFAULT_VOLUME = (160, 192, 160)
DEFAULT_PATCH = (128, 128, 128)
#: nnU-Net's default tile step (``nnUNetv2_predict -step_size``)
TILE_STEP = 0.5
#: nnU-Net's mirroring axes for a 3D configuration (what its trainer stores in the checkpoint)
MIRROR_AXES = (0, 1, 2)
MIRRORING_CHOICES = ("off", "on", "both")
ROW_KEYS = ("arch", "mirroring", "volume", "patch_size", "tiles", "network_calls", "wall_s", "s_per_tile",
            "peak_rss_mib", "peak_mib", "device", "threads")
_MIB = 2 ** 20


def make_predictor(network, patch_size: Sequence[int], num_classes: int, mirroring: bool, device: str = "cpu",
                   spacing: Sequence[float] = (1.0, 1.0, 1.0)):
    """nnU-Net's ``nnUNetPredictor`` set up as ``nnUNetv2_predict`` would be for a model trained on
    this plan (tile step 0.5, gaussian, mirroring over ``MIRROR_AXES`` if ``mirroring``), with
    ``network``'s current weights as the one fold."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.architectures.plans import CONFIGURATION, synthetic_dataset_json, synthetic_plans

    plans = PlansManager(synthetic_plans(patch_size, spacing))
    dev = torch.device(device)
    predictor = nnUNetPredictor(tile_step_size=TILE_STEP, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(network, plans, plans.get_configuration(CONFIGURATION),
                                    [{k: v.clone() for k, v in network.state_dict().items()}],
                                    synthetic_dataset_json(num_classes=num_classes), "benchmark", MIRROR_AXES)
    return predictor


def measure_prediction(name: str, volume: Sequence[int] = DEFAULT_VOLUME, patch_size: Sequence[int] = DEFAULT_PATCH,
                       input_channels: int = 1, num_classes: int = 2, mirroring: bool = False, device: str = "cpu",
                       spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """Predict one random (input_channels, *volume) volume with nnU-Net's predictor and ``name``'s
    network (see the module docstring); returns a row of :data:`ROW_KEYS`. The logits are
    (num_classes, *volume). Call it in a fresh process (:func:`benchmark_prediction` does)."""
    import torch
    import torch.nn.functional as F

    from nnunet_ext.architectures import PlanSpec

    dev = torch.device(device)
    # initialise the conv libraries on a toy before the baseline (as networks.measure)
    F.conv3d(torch.zeros(1, 1, 4, 4, 4, device=dev), torch.zeros(1, 1, 3, 3, 3, device=dev))
    memory = PeakMemory(dev)
    torch.manual_seed(0)
    spec = PlanSpec.from_patch(patch_size, spacing)
    net = build_benchmark_network(name, spec, input_channels, num_classes, deep_supervision=False).to(dev).eval()
    predictor = make_predictor(net, spec.patch_size, num_classes, mirroring, device, spacing)
    data = torch.randn(input_channels, *volume)

    calls = [0]
    hook = net.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    padded = [max(v, p) for v, p in zip(volume, spec.patch_size)]  # nnU-Net pads a smaller volume to the patch
    tiles = len(predictor._internal_get_sliding_window_slicers(padded))
    out = {}

    def predict():
        out["logits"] = predictor.predict_logits_from_preprocessed_data(data)

    memory.reset()
    reset_peak_rss()
    wall_s = seconds_once(predict)
    peak_rss, peak = peak_rss_bytes(), memory.above_baseline()
    hook.remove()
    logits = out.pop("logits")
    if tuple(logits.shape) != (num_classes, *volume):
        raise RuntimeError(f"nnU-Net's predictor returned logits of shape {tuple(logits.shape)}, "
                           f"expected {(num_classes, *volume)}")
    return {"arch": name, "mirroring": bool(mirroring), "volume": list(volume),
            "patch_size": list(spec.patch_size), "tiles": tiles, "network_calls": calls[0], "wall_s": wall_s,
            "s_per_tile": wall_s / tiles, "peak_rss_mib": peak_rss / _MIB, "peak_mib": peak / _MIB,
            "device": dev.type, "threads": torch.get_num_threads()}


def mirroring_modes(mirroring: str) -> list[bool]:
    """``"off"`` / ``"on"`` / ``"both"`` -> the runs to make per network."""
    if mirroring not in MIRRORING_CHOICES:
        raise ValueError(f"mirroring must be one of {', '.join(MIRRORING_CHOICES)}, got '{mirroring}'")
    return {"off": [False], "on": [True], "both": [False, True]}[mirroring]


def benchmark_prediction(archs: Sequence[str] | None = None, volume: Sequence[int] = DEFAULT_VOLUME,
                         patch_size: Sequence[int] = DEFAULT_PATCH, input_channels: int = 1, num_classes: int = 2,
                         mirroring: str = "off", device: str = "cpu", spacing: Sequence[float] = (1.0, 1.0, 1.0),
                         threads: int | None = None, timeout: float | None = None,
                         on_row: Callable[[int, int, dict], None] | None = None) -> list[dict]:
    """Whole-volume prediction of nnU-Net's network (first) and ``archs`` (default
    :func:`~nnunet_ext.bench.networks.default_architectures`), each run in its own subprocess with
    ``threads`` torch threads; ``mirroring`` "both" measures each network without, then with
    mirroring. ``on_row(i, n, row)`` after each run. Raises ``ValueError`` for bad arguments; a run
    that fails or passes ``timeout`` seconds gets a row with ``error``."""
    import torch

    from nnunet_ext.architectures import available_architectures

    archs = default_architectures() if archs is None else [a for a in archs if a != NNUNET]
    unknown = [a for a in archs if a not in available_architectures()]
    if unknown:
        raise ValueError(f"unknown architecture(s) {', '.join(unknown)}; known: "
                         f"{', '.join(available_architectures())} (nnU-Net's own network is always included)")
    modes = mirroring_modes(mirroring)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device; use --device cpu")
    if len(volume) != 3 or any(int(v) < 1 for v in volume):
        raise ValueError(f"volume takes 3 voxel counts >= 1 (z y x), got {list(volume)}")
    for what, v, lo in (("input_channels", input_channels, 1), ("num_classes", num_classes, 2)):
        if int(v) < lo:
            raise ValueError(f"{what} must be >= {lo}, got {v}")
    configs = [{"name": name, "volume": [int(v) for v in volume], "patch_size": [int(p) for p in patch_size],
                "input_channels": input_channels, "num_classes": num_classes, "mirroring": m, "device": device,
                "spacing": [float(s) for s in spacing]} for name in (NNUNET, *archs) for m in modes]
    return run_isolated_rows(measure_prediction, configs, threads, timeout, on_row, keys=("mirroring",))


# ------------------------------------------------------------------------------------------ table


def format_prediction_table(rows: Sequence[dict], budget_gib: float | None = None) -> str:
    """Markdown table, one line per run; times and memory are followed by their ratio to nnU-Net's
    network's run with the same mirroring. With ``budget_gib`` a column says whether the process
    peak stayed within it."""
    baselines = {r["mirroring"]: r for r in rows if r["arch"] == NNUNET and "error" not in r}
    head = ["network", "mirroring", "tiles", "network calls", "wall s", "s/tile", "peak RSS MiB",
            "peak above imports MiB"]
    if budget_gib is not None:
        head.append(f"≤ {budget_gib:g} GiB")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        mirror = "on (8 passes)" if r["mirroring"] else "off"
        if "error" in r:
            lines.append(f"| {network_title(r['arch'])} | {mirror} | " + " | ".join("—" for _ in head[2:-1]) +
                         f" | error: {r['error']} |")
            continue
        baseline = baselines.get(r["mirroring"])
        cells = [network_title(r["arch"]), mirror, str(r["tiles"]), str(r["network_calls"]),
                 f"{r['wall_s']:.4g}" + ratio_suffix(r["wall_s"], baseline and baseline["wall_s"]),
                 f"{r['s_per_tile']:.3g}",
                 f"{r['peak_rss_mib']:.0f}" + ratio_suffix(r["peak_rss_mib"], baseline and baseline["peak_rss_mib"]),
                 f"{r['peak_mib']:.0f}" + ratio_suffix(r["peak_mib"], baseline and baseline["peak_mib"])]
        if budget_gib is not None:
            cells.append("yes" if r["peak_rss_mib"] <= budget_gib * 1024 else "NO")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
