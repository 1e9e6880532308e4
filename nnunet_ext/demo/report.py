"""What the demo shows: the held-out test cases' metrics and overlays of one run, and the table
that compares trainers.

The metrics are :mod:`nnunet_ext.evaluation`'s (the same as ``nnunet-ext evaluate``); the files
go through :mod:`nnunet_ext.io`, each written complete or not at all.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from nnunet_ext.io import format_number


def report_test_cases(raw_dir: Path, pred_dir: Path, out_dir: Path, overlays: bool = True) -> dict:
    """Dice / HD95 / NSD per class per case and means of the predictions in ``pred_dir`` against
    ``raw_dir/labelsTs``: printed, written as ``out_dir/test_metrics.json`` and ``.csv``, and a PNG
    overlay per test case in ``out_dir/overlays`` (its legend: each label's colour, name and Dice in
    that case). Returns the evaluation result."""
    from nnunet_ext.evaluation.folder import evaluate_folders
    from nnunet_ext.evaluation.overlay import save_overlay
    from nnunet_ext.evaluation.report import format_summary, write_outputs

    res = evaluate_folders(raw_dir / "labelsTs", pred_dir, dataset_json=raw_dir / "dataset.json",
                           num_processes=1, progress=False)
    write_outputs(res, out_dir / "test_metrics.json", out_dir / "test_metrics.csv")
    keys = list(res["labels"])
    print("\n==> Held-out test cases (Dice per class)")
    print("    " + "case".ljust(14) + "".join(f"{res['labels'][k]:>16}" for k in keys))
    for case in res["cases"]:
        print("    " + case["case"].ljust(14) + "".join(f"{case['metrics'][k]['dice']:>16.3f}" for k in keys))
    print("    " + "mean".ljust(14) + "".join(f"{res['mean'][k]['dice']:>16.3f}" for k in keys)
          + f"   (mean over classes {res['overall']['dice']:.3f})\n")
    print("    " + format_summary(res).replace("\n", "\n    "))
    if overlays:
        plain = [k for k in keys if k.isdigit()]          # labels (regions have no single colour)
        for case in res["cases"]:
            png = save_overlay(raw_dir / "imagesTs" / f"{case['case']}_0000.nii.gz", case["reference_file"],
                               case["prediction_file"], out_dir / "overlays" / f"{case['case']}.png",
                               title=f"{case['case']}: image | reference | prediction",
                               label_names={int(k): res["labels"][k] for k in plain},
                               dice={int(k): case["metrics"][k]["dice"] for k in plain})
        print(f"    overlays: {png.parent}")
    print(f"    metrics: {out_dir / 'test_metrics.json'} and .csv")
    return res


def comparison_table(rows: list[dict]) -> str:
    """Markdown: one row per trainer; s/iteration also as a ratio to stock nnUNetTrainer's when present;
    the last EMA pseudo-Dice of training (fold mean), and how far the cross-validation Dice (mean over
    folds) lies above the held-out test Dice (mean over classes)."""
    num = format_number
    ref = next((r["s_per_iteration"] for r in rows if r["trainer"].startswith("nnUNetTrainer_")), None)
    classes = list(rows[0]["test_dice"])
    head = (["trainer", "s/iteration", "× nnU-Net", "training wall s", "validation Dice (folds)",
             "final EMA pseudo-Dice"] + [f"test Dice {c}" for c in classes]
            + ["test Dice mean", "validation − test", "HD95 mm", "NSD@1mm"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s, o = r["s_per_iteration"], r["test_overall"]
        ratio = s / ref if s is not None and ref else None
        val = list(r["validation_dice"].values())
        gap = statistics.fmean(val) - o["dice"] if val else None
        ema = r["curve"]["ema_pseudo_dice"][-1] if r["curve"]["ema_pseudo_dice"] else None
        vals = [r["trainer"], num(s, 2), num(ratio, 2), num(r["training_wall_s"], 0),
                " / ".join(num(d, 3) for d in val), num(ema, 3)]
        vals += ([num(r["test_dice"][c], 3) for c in classes]
                 + [num(o["dice"], 3), num(gap, 3), num(o["hd95"], 2), num(o["nsd"], 3)])
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)
