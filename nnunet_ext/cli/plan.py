"""``nnunet-ext plan``: nnU-Net plans whose patch and batch size fit a trainer's network in a GPU
memory target (:mod:`nnunet_ext.planning`)."""

import json
import math


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory-aware plans per trainer (patch and batch size for a GPU memory target)",
                       description="Re-plan the 3D configurations of a dataset's nnU-Net plans for each trainer: "
                                   "nnU-Net's planner rules (patch aspect from the median shape, topology from the "
                                   "spacing, batch >= 2 and <= 5%% of the dataset) with the estimated peak training "
                                   "memory (float16 autocast, no GPU needed) of the trainer's own network. Writes "
                                   "<source>_<trainer>_<N>G.json beside the source plans (these stay untouched); "
                                   "spacing and data identifier are kept, so the preprocessed data is reused.")
    p.add_argument("-d", "--dataset", required=True, help="dataset ID or name (as for nnUNetv2_plan_and_preprocess)")
    p.add_argument("--trainer", "-tr", nargs="+", required=True, metavar="TRAINER",
                   help="trainer(s) to plan for, e.g. SegMambaTrainer UNETRPPTrainer (see `nnunet-ext trainers`)")
    p.add_argument("--gpu-memory", type=float, nargs="+", default=[8.0], metavar="GB",
                   help="GPU memory target(s) in GB, one plans file each (default 8, nnU-Net's default)")
    p.add_argument("--source-plans", default="nnUNetPlans",
                   help="plans to start from, in $nnUNet_preprocessed/DatasetXXX (default nnUNetPlans)")
    p.add_argument("--headroom", type=float, default=None, metavar="FRACTION",
                   help="fraction of the target kept free for the CUDA context, cuDNN workspaces and allocator "
                        "fragmentation (default 0.1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run)


def _check_arguments(args) -> None:
    """The checks that need no import: one line naming the option, before torch and nnU-Net load."""
    from nnunet_ext.cli import _checks

    for g in args.gpu_memory:
        if not (math.isfinite(g) and g > 0):
            raise _checks.fail("plan", f"--gpu-memory takes GPU memory targets in GB > 0 (e.g. 24), got {g:g}")
    repeated = sorted({g for g in args.gpu_memory if args.gpu_memory.count(g) > 1})
    if repeated:
        raise _checks.fail("plan", f"--gpu-memory gives {' '.join(f'{g:g}' for g in repeated)} more than once; "
                                   f"give each target once (one plans file each)")
    if len(set(args.trainer)) != len(args.trainer):
        raise _checks.fail("plan", "--trainer names a trainer twice; give each trainer once")
    if args.headroom is not None and not (math.isfinite(args.headroom) and 0 <= args.headroom < 1):
        raise _checks.fail("plan", f"--headroom is a fraction of the target from 0 to below 1 (e.g. 0.1), "
                                   f"got {args.headroom:g}")


def run(args) -> int:
    _check_arguments(args)
    from nnunet_ext.planning.dataset import (PlanningError, format_rows, next_steps, plan_dataset,
                                             result_rows, write_plans)
    from nnunet_ext.planning.planner import DEFAULT_HEADROOM

    headroom = DEFAULT_HEADROOM if args.headroom is None else args.headroom
    try:
        results = plan_dataset(args.dataset, args.trainer, args.gpu_memory, args.source_plans, headroom)
    except PlanningError as e:
        raise SystemExit(f"nnunet-ext plan: {e}") from None
    write_plans(results)
    steps = next_steps(args.dataset, results)
    rows = result_rows(results)
    if args.json:
        print(json.dumps({"rows": rows, "next": steps}))
        return 0
    print(format_rows(rows))
    print("\nwritten: " + ", ".join(r.path for r in results))
    print("next:\n  " + "\n  ".join(steps))
    return 0

