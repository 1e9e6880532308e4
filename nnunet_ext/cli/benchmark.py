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
                   help="networks to compare (default: every registered one but small_unet); nnU-Net's "
                        "network is always the first row")
    p.add_argument("--patch", type=int, nargs=3, default=(64, 64, 64), metavar=("Z", "Y", "X"),
                   help="patch size (default 64 64 64, small enough for a CPU)")
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SZ", "SY", "SX"),
                   help="voxel spacing the planner rule derives the strides from (default 1 1 1)")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=2, help="segmentation heads incl. background (default 2)")
    p.add_argument("--batch", type=int, default=1, help="training batch size (inference is one patch; default 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; their mean is reported (default 3)")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed runs before the repeats, besides torch.utils.benchmark's two (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads per network (default: torch's default)")
    p.add_argument("--timeout", type=float, metavar="S", help="give up on a network after S seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object (config and rows) instead")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_ext.architectures import available_architectures
    from nnunet_ext.cli import _checks
    from nnunet_ext.bench.networks import NNUNET, benchmark, format_table

    unknown = [a for a in args.archs or () if a not in (*available_architectures(), NNUNET, "nnunet")]
    if unknown:
        raise SystemExit(f"nnunet-ext benchmark: unknown architecture(s) {', '.join(unknown)}; known: "
                         f"{', '.join(available_architectures())} (nnU-Net's own network is always included)")
    for option, value, low, meaning in (("--repeats", args.repeats, 1, " (timed runs)"),
                                        ("--warmup", args.warmup, 0, ""), ("--batch", args.batch, 1, ""),
                                        ("--in-channels", args.in_channels, 1, ""),
                                        ("--classes", args.classes, 2, " (segmentation heads incl. background)"),
                                        ("--threads", args.threads, 1, "")):
        _checks.at_least("benchmark", option, value, low, meaning)
    if args.timeout is not None and not args.timeout > 0:
        raise SystemExit(f"nnunet-ext benchmark: --timeout must be > 0 seconds, got {args.timeout:g}")
    _checks.patch_and_spacing("benchmark", args.patch, args.spacing)

    def progress(i, n, row):
        status = f"error: {row['error']}" if "error" in row else \
            f"train {row['train_s']:.3g} s/iter, infer {row['infer_s']:.3g} s/patch"
        print(f"[{i + 1}/{n}] {row['arch']}: {status}", file=sys.stderr, flush=True)

    config = {"patch_size": list(args.patch), "spacing": list(args.spacing), "in_channels": args.in_channels,
              "classes": args.classes, "batch": args.batch, "device": args.device, "repeats": args.repeats,
              "warmup": args.warmup}
    try:
        rows = benchmark(args.archs, threads=args.threads, timeout=args.timeout, on_row=progress, **config)
    except ValueError as e:
        raise SystemExit(f"nnunet-ext benchmark: {e}") from None
    if args.json:
        print(json.dumps({"config": config, "rows": rows}))
        return 0
    ok = next((r for r in rows if "error" not in r), None)
    where = f"{ok['device_name']}, {ok['threads']} threads" if ok and ok["device"] == "cpu" else \
        (ok["device_name"] if ok else args.device)
    print(f"patch {list(args.patch)}, spacing {list(args.spacing)}, batch {args.batch}, {args.in_channels} input "
          f"channel(s), {args.classes} classes, {where}; mean of {args.repeats} after {2 + args.warmup} warm-up; "
          f"ratios to nnU-Net's PlainConvUNet\n")
    print(format_table(rows))
    return 0
