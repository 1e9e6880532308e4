"""``nnunet-ext summary``: parameters and MACs of an architecture at a plan's setting."""

import json


def register(sub) -> None:
    p = sub.add_parser("summary", help="parameters and MACs of a network at a patch size")
    p.add_argument("--arch", required=True, help="architecture name (see `nnunet-ext trainers`)")
    p.add_argument("--patch", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"))
    p.add_argument("--input-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=2, help="segmentation heads (incl. background)")
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SZ", "SY", "SX"),
                   help="voxel spacing; nnU-Net's planner rule derives the strides from it (default 1 1 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_ext.architectures import PlanError, available_architectures
    from nnunet_ext.bench.counts import summarize
    from nnunet_ext.cli import _checks

    if args.arch not in available_architectures():
        raise SystemExit(f"nnunet-ext summary: unknown architecture '{args.arch}'; "
                         f"known: {', '.join(available_architectures())}")
    _checks.at_least("summary", "--input-channels", args.input_channels, 1, " (input channels)")
    _checks.at_least("summary", "--num-classes", args.num_classes, 1, " (segmentation heads: classes incl. background, "
                                                              "or the number of regions)")
    _checks.patch_and_spacing("summary", args.patch, args.spacing)
    _checks.scan_backend("summary")
    try:
        s = summarize(args.arch, args.patch, args.input_channels, args.num_classes, args.spacing)
    except PlanError as e:
        raise SystemExit(f"nnunet-ext summary: {e}") from None
    if args.json:
        print(json.dumps({k: s[k] for k in ("arch", "params", "params_inference", "macs")} |
                         {"params_trainable": s["params_trainable"], "patch_size": s["patch_size"],
                          "strides": s["strides"]}))
        return 0
    print(f"{s['arch']} at patch {s['patch_size']} (nnU-Net plan strides {s['strides']}), "
          f"{args.input_channels} input channel(s), {args.num_classes} classes")
    print(f"  parameters:            {s['params']:>14,d}  ({s['params'] / 1e6:.2f} M)")
    print(f"  trainable parameters:  {s['params_trainable']:>14,d}")
    if s["params_inference"] != s["params"]:
        print(f"  at inference:          {s['params_inference']:>14,d}  ({s['params_inference'] / 1e6:.2f} M)")
    print(f"  MACs (one forward):    {s['macs']:>14,d}  ({s['macs'] / 1e9:.2f} G)")
    return 0
