"""``nnunet-ext benchmark``: params, MACs, training/inference time and peak memory of every
registered network next to stock nnU-Net's default U-Net, on the plan of one patch size."""

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="compare every network with nnU-Net's default U-Net (time, memory, size)",
                       description="For nnU-Net's default PlainConvUNet and each registered network, on the plan "
                                   "nnU-Net would make for --patch: parameters, MACs, seconds per training "
                                   "iteration (nnU-Net's train step), seconds per inference patch and peak memory, "
                                   "each network in a fresh subprocess. Prints a markdown table with ratios to "
                                   "nnU-Net's network.")
    p.add_argument("--archs", nargs="+", metavar="ARCH",
                   help="networks to compare (default: every registered paper network); nnU-Net's "
                        "network is always the first row")
    p.add_argument("--patch", type=int, nargs=3, default=(64, 64, 64), metavar=("Z", "Y", "X"),
                   help="patch size (default 64 64 64, small enough for a CPU)")
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SZ", "SY", "SX"),
                   help="voxel spacing the planner rule derives the strides from (default 1 1 1)")
    p.add_argument("--input-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=2, help="segmentation heads incl. background (default 2)")
    p.add_argument("--batch", type=int, default=1, help="training batch size (inference is one patch; default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; their mean is reported (default 3)")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed runs before the repeats, besides torch.utils.benchmark's two (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads per network (default: torch's default)")
    p.add_argument("--timeout", type=float, metavar="S", help="give up on a network after S seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object (config and rows) instead")
    w = p.add_argument_group("whole-volume prediction (--predict)",
                             "instead of the per-patch table: one volume through nnU-Net's own sliding-window "
                             "predictor (tile step 0.5, gaussian) per network, random weights; wall time, tiles "
                             "and peak resident memory of each run in a fresh subprocess (uses --archs, "
                             "--input-channels, --num-classes, --spacing, --device, --threads, --timeout, --json)")
    w.add_argument("--predict", action="store_true", help="measure whole-volume prediction")
    w.add_argument("--predict-shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="volume in voxels (default 160 192 160, a 1 mm brain)")
    w.add_argument("--predict-patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="the plan's patch = the sliding window's tile (default 128 128 128)")
    w.add_argument("--mirroring", choices=("off", "on", "both"), default="off",
                   help="nnU-Net's test-time mirroring over all axes (8 network calls per tile); both: each "
                        "network without, then with (default off)")
    w.add_argument("--memory-budget", type=float, default=24.0, metavar="GIB",
                   help="mark runs whose peak resident memory exceeds GIB GiB (default 24)")
    p.add_argument("--memory-check", type=int, nargs=3, action="append", metavar=("Z", "Y", "X"),
                   help="instead: the planner's estimated peak training memory (float32, CPU) beside the measured "
                        "peak of real train steps, per network, at this patch (repeat for more patches; uses "
                        "--archs, --batch, --input-channels, --num-classes, --threads, --timeout, --json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_ext.architectures import available_architectures
    from nnunet_ext.cli import _checks
    from nnunet_ext.bench.networks import NNUNET, benchmark, format_table, network_title

    unknown = [a for a in args.archs or () if a not in (*available_architectures(), NNUNET)]
    if unknown:
        raise SystemExit(f"nnunet-ext benchmark: unknown architecture(s) {', '.join(unknown)}; known: "
                         f"{', '.join(available_architectures())} (nnU-Net's own network is always included)")
    _checks.scan_backend("benchmark", args.device)
    if args.memory_check:
        return _run_memory_check(args)
    for option, value, low, meaning in (("--repeats", args.repeats, 1, " (timed runs)"),
                                        ("--warmup", args.warmup, 0, ""), ("--batch", args.batch, 1, ""),
                                        ("--input-channels", args.input_channels, 1, ""),
                                        ("--num-classes", args.num_classes, 2,
                                         " (segmentation heads incl. background)"),
                                        ("--threads", args.threads, 1, "")):
        _checks.at_least("benchmark", option, value, low, meaning)
    if args.timeout is not None and not args.timeout > 0:
        raise SystemExit(f"nnunet-ext benchmark: --timeout must be > 0 seconds, got {args.timeout:g}")
    _checks.patch_and_spacing("benchmark", args.patch, args.spacing)
    if args.predict:
        return _run_predict(args)

    def progress(i, n, row):
        status = f"error: {row['error']}" if "error" in row else \
            f"train {row['train_s']:.3g} s/iter, infer {row['infer_s']:.3g} s/patch"
        print(f"[{i + 1}/{n}] {network_title(row['arch'])}: {status}", file=sys.stderr, flush=True)

    config = {"patch_size": list(args.patch), "spacing": list(args.spacing), "input_channels": args.input_channels,
              "num_classes": args.num_classes, "batch": args.batch, "device": args.device, "repeats": args.repeats,
              "warmup": args.warmup}

    def describe(rows, ok):
        where = f"{ok['device_name']}, {ok['threads']} threads" if ok and ok["device"] == "cpu" else \
            (ok["device_name"] if ok else args.device)
        return (f"patch {list(args.patch)}, spacing {list(args.spacing)}, batch {args.batch}, {args.input_channels} "
                f"input channel(s), {args.num_classes} classes, {where}; mean of {args.repeats} after "
                f"{2 + args.warmup} warm-up; ratios to nnU-Net (PlainConvUNet)", format_table(rows))

    return _measure_and_print(args, benchmark, config, progress, describe)


def _measure_and_print(args, measure, config: dict, progress, describe) -> int:
    """``measure(args.archs, ..., on_row=progress, **config)``, then one JSON object (``--json``) or
    the header and markdown table that ``describe(rows, first_row_without_error)`` returns."""
    try:
        rows = measure(args.archs, threads=args.threads, timeout=args.timeout, on_row=progress, **config)
    except ValueError as e:
        raise SystemExit(f"nnunet-ext benchmark: {e}") from None
    if args.json:
        print(json.dumps({"config": config, "rows": rows}))
        return 0
    header, table = describe(rows, next((r for r in rows if "error" not in r), None))
    print(header + "\n")
    print(table)
    return 0


def _run_predict(args) -> int:
    """``--predict``: the whole-volume prediction table (:mod:`nnunet_ext.bench.prediction`)."""
    from nnunet_ext.cli import _checks
    from nnunet_ext.bench import prediction as pr

    volume = tuple(args.predict_shape or pr.DEFAULT_VOLUME)
    patch = tuple(args.predict_patch or pr.DEFAULT_PATCH)
    if any(v < 1 for v in volume):
        raise _checks.fail("benchmark", f"--predict-shape takes voxel counts >= 1 (z y x), "
                                        f"got {' '.join(map(str, volume))}")
    _checks.patch_and_spacing("benchmark", patch, args.spacing, option="--predict-patch")
    if not args.memory_budget > 0:
        raise _checks.fail("benchmark", f"--memory-budget must be > 0 GiB, got {args.memory_budget:g}")

    def progress(i, n, row):
        status = f"error: {row['error']}" if "error" in row else \
            f"{row['tiles']} tiles, {row['wall_s']:.4g} s, peak RSS {row['peak_rss_mib']:.0f} MiB"
        mirror = "on" if row["mirroring"] else "off"
        print(f"[{i + 1}/{n}] {pr.network_title(row['arch'])} (mirroring {mirror}): {status}",
              file=sys.stderr, flush=True)

    config = {"volume": list(volume), "patch_size": list(patch), "spacing": list(args.spacing),
              "input_channels": args.input_channels, "num_classes": args.num_classes, "mirroring": args.mirroring,
              "device": args.device}
    def describe(rows, ok):
        return (f"whole-volume prediction with nnU-Net's nnUNetPredictor: volume {list(volume)}, tile {list(patch)}, "
                f"step {pr.TILE_STEP}, gaussian, spacing {list(args.spacing)}, {args.input_channels} input channel(s), "
                f"{args.num_classes} classes, {args.device}" + (f", {ok['threads']} threads" if ok else "") +
                "; one run each, random weights; ratios to nnU-Net (PlainConvUNet) with the same mirroring",
                pr.format_prediction_table(rows, args.memory_budget))

    return _measure_and_print(args, pr.benchmark_prediction, config, progress, describe)


def _run_memory_check(args) -> int:
    """``--memory-check Z Y X [...]``: estimated beside measured peak training memory
    (:mod:`nnunet_ext.bench.memory_check`), as a table (or JSON)."""
    import torch

    from nnunet_ext.bench.memory_check import format_memory_table, memory_check
    from nnunet_ext.bench.networks import NNUNET, default_architectures

    for patch in args.memory_check:
        if any(p < 1 for p in patch):
            raise SystemExit(f"nnunet-ext benchmark: --memory-check takes voxel counts >= 1 (z y x), got "
                             f"{' '.join(map(str, patch))}")
    archs = [NNUNET, *(a for a in (args.archs or default_architectures()) if a != NNUNET)]
    threads = args.threads or torch.get_num_threads()
    rows = memory_check(archs, [tuple(p) for p in args.memory_check], args.input_channels, args.num_classes, args.batch,
                        threads, args.timeout,
                        on_row=lambda r: print(format_memory_table([r]).splitlines()[-1], file=sys.stderr,
                                               flush=True))
    if args.json:
        print(json.dumps({"rows": rows}))
    else:
        print(f"float32 training on the CPU, {threads} thread(s); estimate: nnunet_ext.planning (fake tensors), "
              f"measured: peak resident memory of real steps in a fresh process\n")
        print(format_memory_table(rows))
    return 0
