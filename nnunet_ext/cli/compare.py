"""``nnunet-ext compare``: every trainer's cross-validation side by side, with paired statistics.

The options are checked here; reading, scoring, statistics, pictures and writing are
:func:`nnunet_ext.evaluation.compare.compare_trainers`.
"""

from __future__ import annotations

from nnunet_ext.cli import _checks


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare trainers' cross-validation: paired tests, ranking, box plots",
        description="Scores every cross-validation case that nnU-Net's validation wrote (fold_<f>/validation) "
                    "for each trainer against gt_segmentations (Dice, HD95, NSD per class; cached beside the "
                    "predictions), then compares each trainer with the baseline per class and metric (paired "
                    "mean difference with a 95 % bootstrap interval, Wilcoxon signed-rank test, Holm-corrected), "
                    "ranks all trainers (Friedman test and critical difference with >= 3) and writes "
                    "summary.md/.csv, per_case.csv, boxplots.png, ranking.png and compare.json.")
    p.add_argument("-d", dest="dataset", required=True, metavar="DATASET", help="dataset id or name")
    p.add_argument("-c", dest="configuration", required=True, metavar="CONFIG", help="configuration, e.g. 3d_fullres")
    p.add_argument("-tr", dest="trainers", nargs="+", required=True, metavar="TRAINER",
                   help="two or more trainers (as given to nnUNetv2_train -tr)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", metavar="PLANS",
                   help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", dest="folds", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD",
                   help="folds to pool (default 0 1 2 3 4)")
    p.add_argument("--baseline", metavar="TRAINER",
                   help="the trainer the others are compared with (default: the first)")
    p.add_argument("--out", metavar="DIR", help="output folder (default <nnUNet_results>/<Dataset>/compare_<CONFIG>)")
    p.add_argument("--tolerance", type=float, default=1.0, metavar="MM", help="NSD tolerance in mm (default 1)")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="worker processes for scoring (default: nnU-Net's default, at most the CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _folds(values: list[str]) -> list[int]:
    try:
        folds = [int(v) for v in values]
    except ValueError:
        raise _checks.fail("compare", f"-f takes fold numbers (e.g. -f 0 1 2 3 4), got {' '.join(values)}") from None
    if len(set(folds)) != len(folds) or any(f < 0 for f in folds):
        raise _checks.fail("compare", f"-f takes distinct fold numbers >= 0, got {' '.join(values)}")
    return folds


def run(args) -> int:
    folds = _folds(args.folds)
    _checks.at_least("compare", "--num-processes", args.num_processes, 1)
    _checks.finite_range("compare", "--tolerance", args.tolerance, 0, 1e6, " mm")
    from nnunet_ext.evaluation.cases import EvaluationError
    from nnunet_ext.evaluation.compare import compare_trainers, format_summary

    try:
        result = compare_trainers(args.dataset, args.configuration, args.trainers, folds, args.plans,
                                  args.baseline, args.out, tolerance_mm=args.tolerance,
                                  num_processes=args.num_processes, progress=not args.quiet)
    except EvaluationError as e:
        raise _checks.fail("compare", str(e)) from None
    except OSError as e:
        raise _checks.fail("compare", f"cannot write '{e.filename}' ({e.strerror or e}); "
                                      f"choose a writable --out") from None
    print(format_summary(result))
    n = len(result["cases"]) * len(result["trainers"])
    print(f"\nscored {result['n_scored']} of {n} trainer × case pairs "
          f"(the rest from the caches beside the predictions)")
    print(f"wrote {result['out']}: {', '.join(p.rsplit('/', 1)[-1] for p in result['files'])}")
    return 0
