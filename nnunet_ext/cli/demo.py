"""``nnunet-ext demo``: the options, their checks, and one call to
:func:`nnunet_ext.demo.workflow.run_demo` (what the demo does and reuses is documented there)."""

from __future__ import annotations

from nnunet_ext.cli import _checks
from nnunet_ext.demo.dataset import DEMO_DATASET_ID, DEMO_SPACING_MM, SPACING_RANGE_MM
from nnunet_ext.demo.workflow import DEFAULT_EPOCHS, DEFAULT_ITERS, DEFAULT_TRAINER


def register(sub) -> None:
    low, high = SPACING_RANGE_MM
    p = sub.add_parser("demo", help="build the demo dataset, plan, train, predict and evaluate with stock nnU-Net")
    p.add_argument("--trainer", nargs="+", default=[DEFAULT_TRAINER], metavar="TRAINER",
                   help=f"trainer name(s) (default {DEFAULT_TRAINER}; see `nnunet-ext trainers`; nnUNetTrainer is "
                   "stock nnU-Net); several are trained on the same data one after the other and compared in "
                   "one table (Dice, HD95, NSD, seconds per training iteration)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs per fold (default {DEFAULT_EPOCHS})")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS,
                   help=f"training iterations per epoch (default {DEFAULT_ITERS}; nnU-Net's is 250)")
    p.add_argument("--folds", type=int, nargs="+", default=[0], help="folds to train (0 1 2 3 4 for the full workflow)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available, else cpu")
    p.add_argument("--spacing", type=float, default=DEMO_SPACING_MM,
                   help=f"demo voxel size in mm, {low:g} to {high:g} (default {DEMO_SPACING_MM:g}); another spacing "
                        f"rebuilds the dataset and removes the plans, preprocessed data and models the demo made "
                        f"from the old one (trained models only with --yes or a 'y' on a terminal)")
    p.add_argument("--dataset-id", type=int, default=DEMO_DATASET_ID,
                   help=f"nnU-Net dataset id of the demo dataset, 1 to 999 (default {DEMO_DATASET_ID}); one id "
                        f"holds one dataset, so give another id to keep a second spacing")
    p.add_argument("--yes", action="store_true",
                   help="remove trained demo models made from other data without asking (needed where no "
                        "terminal can ask). The demo only ever removes what it wrote itself, as its manifest "
                        "$nnUNet_results/nnunet_ext_demo_manifest.json lists; a second demo on the same folders "
                        "refuses at once, naming the running one (lock $nnUNet_results/nnunet_ext_demo.lock)")
    p.set_defaults(func=run)


def _check_arguments(args) -> None:
    """Every argument check that needs no import: one line naming the option, before anything runs."""
    _checks.at_least("demo", "--epochs", args.epochs, 1, " (epochs per fold)")
    _checks.at_least("demo", "--iters", args.iters, 1, " (training iterations per epoch)")
    _checks.finite_range("demo", "--spacing", args.spacing, *SPACING_RANGE_MM, f" mm (default {DEMO_SPACING_MM:g})")
    if not 1 <= args.dataset_id <= 999:
        raise _checks.fail("demo", f"--dataset-id must be from 1 to 999 (nnU-Net's DatasetXXX), got {args.dataset_id}")
    if sorted(set(args.folds)) != sorted(args.folds) or not all(0 <= f <= 4 for f in args.folds):
        raise _checks.fail("demo", "--folds takes distinct folds from 0 1 2 3 4")
    if len(set(args.trainer)) != len(args.trainer):
        raise _checks.fail("demo", "--trainer names a trainer twice")


def run(args) -> int:
    _check_arguments(args)
    import torch

    from nnunet_ext.demo.workflow import DemoError, run_demo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise _checks.fail("demo", "--device cuda but torch sees no CUDA device; use --device cpu")
    _checks.scan_backend("demo", device)
    try:
        run_demo(args.trainer, args.epochs, args.iters, args.folds, device, args.spacing, args.dataset_id,
                 assume_yes=args.yes)
    except DemoError as e:
        raise _checks.fail("demo", str(e)) from None
    return 0
