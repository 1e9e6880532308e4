"""``nnunet-ext evaluate``: Dice, HD95 and NSD per case and class of a prediction folder.

Writes the JSON (schema in :mod:`nnunet_ext.evaluation.folder`) and a CSV, both or neither, and
prints the per-class means as a markdown table. The options are checked here, before anything is
read; the scoring is :func:`nnunet_ext.evaluation.folder.evaluate_folders`.
"""

import os
import sys
from pathlib import Path
from typing import Iterable

from nnunet_ext.cli import _checks


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice, HD95 and normalised surface distance of a prediction folder",
                       description="Per case and class Dice, HD95 (mm) and normalised surface distance (NSD) "
                                   "of the predictions in --pred against the same-named references in --gt, "
                                   "with the voxel spacing read from the images. Empty masks: both empty -> "
                                   "NaN for all three (skipped in means); exactly one empty -> Dice 0, "
                                   "HD95 inf, NSD 0. Label maps must hold integer labels, and a prediction "
                                   "label that --dataset-json does not declare (without it: that no reference "
                                   "has, unless --labels is given) stops with the case named.")
    p.add_argument("--gt", required=True, metavar="DIR", help="reference label maps (e.g. labelsTs)")
    p.add_argument("--pred", required=True, metavar="DIR", help="predictions with the references' file names")
    p.add_argument("--labels", nargs="+", metavar="L",
                   help="classes to score (default: those of --dataset-json, else every non-zero label "
                        "in the references)")
    p.add_argument("--dataset-json", metavar="FILE", help="nnU-Net dataset.json: class names, ignore label, "
                                                          "default classes (regions supported)")
    p.add_argument("--tolerance", type=float, default=1.0, metavar="MM", help="NSD tolerance in mm (default 1)")
    p.add_argument("--out", metavar="FILE", help="JSON output (default: PRED/evaluation.json)")
    p.add_argument("--csv", metavar="FILE", help="CSV output (default: the JSON's path with .csv)")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="worker processes (default: nnU-Net's default, at most the CPU count)")
    p.add_argument("--file-ending", default=".nii.gz", help="file ending of the label maps (default .nii.gz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_output(option: str, path: Path, example: str) -> None:
    """One clear line, before anything is computed, when ``path`` cannot become a file."""
    if path.is_dir():
        raise _checks.fail("evaluate", f"{option} '{path}' is a folder; give a file name, "
                                       f"e.g. {option} {path / example}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _checks.fail("evaluate", f"{option} '{path}' cannot be written: '{parent}' is a file, "
                                       f"not a folder; choose another path")
    why = _not_writable(parent)
    if why:
        raise _checks.fail("evaluate", f"{option} '{path}' cannot be written: '{parent}' is not writable "
                                       f"({why}); choose a writable {option}")


def _not_writable(folder: Path) -> str:
    """Why no file can be created in the existing ``folder`` ('' if one can): a file is created
    and removed there, so a read-only file system or one that refuses root is caught too."""
    import tempfile

    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnunet-ext-write-check-"):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return ""


def parse_labels(values: Iterable[str]) -> list[int]:
    """``--labels`` values as positive ints (one line naming the bad value otherwise)."""
    out = []
    for v in values:
        try:
            i = int(v)
        except ValueError:
            raise _checks.fail("evaluate", f"--labels takes integer label values (e.g. --labels 1 2), "
                                           f"got '{v}'") from None
        if i <= 0:
            raise _checks.fail("evaluate", f"--labels takes foreground labels (> 0), got {i}; "
                                           f"background is not scored")
        out.append(i)
    return out


def run(args) -> int:
    from nnunet_ext.evaluation.cases import EvaluationError
    from nnunet_ext.evaluation.folder import evaluate_folders
    from nnunet_ext.evaluation.report import format_summary, write_outputs

    out = Path(args.out) if args.out else Path(args.pred) / "evaluation.json"
    csv_path = Path(args.csv) if args.csv else out.with_name(out.name.removesuffix(".json") + ".csv")
    _check_output("--out", out, "evaluation.json")
    _check_output("--csv", csv_path, "evaluation.csv")
    if out.resolve() == csv_path.resolve():
        raise _checks.fail("evaluate", f"--out and --csv are the same file '{out}'; give --csv another name")
    _checks.at_least("evaluate", "--num-processes", args.num_processes, 1)
    labels = parse_labels(args.labels) if args.labels else None
    try:
        result = evaluate_folders(args.gt, args.pred, labels=labels, tolerance_mm=args.tolerance,
                                  dataset_json=args.dataset_json, num_processes=args.num_processes,
                                  file_ending=args.file_ending, progress=not args.quiet)
    except EvaluationError as e:
        raise _checks.fail("evaluate", str(e)) from None
    try:
        write_outputs(result, out, csv_path)
    except OSError as e:
        raise _checks.fail("evaluate", f"cannot write '{e.filename or out}' ({e.strerror or e}); "
                                       f"choose a writable --out / --csv") from None
    print(f"{len(result['cases'])} cases, NSD tolerance {result['tolerance_mm']:g} mm")
    print(format_summary(result))
    if result["ignored_predictions"]:
        print(f"ignored {len(result['ignored_predictions'])} prediction(s) without a reference")
    unscored = result["unscored_prediction_labels"]
    if unscored:
        shown = "; ".join(f"'{c}': {' '.join(map(str, v))}" for c, v in list(unscored.items())[:5])
        more = f" and {len(unscored) - 5} more case(s)" if len(unscored) > 5 else ""
        print(f"warning: predictions hold labels that are not among --labels and in no reference, so they were "
              f"not scored ({shown}{more}); add them to --labels to score them", file=sys.stderr)
    print(f"wrote {out} and {csv_path}")
    return 0
