"""``nnunet-ext demo``: the whole nnU-Net workflow on the embedded demo dataset, with stock commands.

Steps (each skipped when its output exists, so re-running reuses the work):
1. build the demo dataset (MNI152 template from the installed nilearn, see :mod:`nnunet_ext.data.demo`);
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres``;
3. ``nnUNetv2_train ... -tr <Trainer>_<E>epochs_<I>iters`` for each fold;
4. with all five folds: ``nnUNetv2_find_best_configuration``;
5. ``nnUNetv2_predict`` of the held-out test cases (ensemble of the trained folds), then with five
   folds ``nnUNetv2_apply_postprocessing`` with the postprocessing the previous step selected;
6. evaluation against the held-out labels (Dice, HD95, NSD per class and case) and PNG overlays.

Steps 3-6 run for each ``--trainer`` given; with several, a table compares them (test Dice, HD95,
NSD, cross-validation Dice, and seconds per training iteration from the variants' timing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: default trainer and budget, chosen by measurement on an idle 2-core CPU (demo patch 40x48x40,
#: batch 2): MISSU trains at 1.1 s/iteration there (nnU-Net's U-Net 1.5 s, SegResMamba 2.2 s,
#: UNETR++ ~3x and SegMamba ~27x nnU-Net's) and reaches test Dice 0.84 / 0.77 after 10 x 15 iterations, so the
#: whole demo takes about 5 minutes.
DEFAULT_TRAINER = "MISSUTrainer"
DEFAULT_EPOCHS = 10
DEFAULT_ITERS = 15
DEMO_SPACING_MM = 4.0

_SHOW = re.compile(r"(Epoch \d+|Train step|train_loss|val_loss|Pseudo dice|Epoch time|Mean Validation Dice|"
                   r"Traceback|Error|error:)")


def register(sub) -> None:
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
    p.add_argument("--spacing", type=float, default=DEMO_SPACING_MM, help="demo voxel size in mm (default 4)")
    p.add_argument("--dataset-id", type=int, default=None, help="nnU-Net dataset id of the demo dataset")
    p.set_defaults(func=run)


class Workflow:
    """Paths and a subprocess runner shared by the demo steps."""

    def __init__(self, dataset_id: int, dataset_name: str, device: str):
        self.env = dict(os.environ)
        base = Path.cwd() / "nnunet_ext_demo"
        for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
            if not self.env.get(var):
                self.env[var] = str(base / sub)
            Path(self.env[var]).mkdir(parents=True, exist_ok=True)
        # 2-core friendly defaults; a user's own settings win
        ncpu = os.cpu_count() or 2
        self.env.setdefault("nnUNet_n_proc_DA", str(max(1, min(ncpu - 1, 4))))
        self.env.setdefault("nnUNet_def_n_proc", str(max(1, min(ncpu, 4))))
        self.dataset_id, self.dataset_name, self.device = dataset_id, dataset_name, device
        self.out = Path(self.env["nnUNet_results"]) / dataset_name / "nnunet_ext_demo"

    @property
    def raw(self) -> Path:
        return Path(self.env["nnUNet_raw"])

    @property
    def preprocessed(self) -> Path:
        return Path(self.env["nnUNet_preprocessed"]) / self.dataset_name

    def results(self, trainer: str) -> Path:
        return Path(self.env["nnUNet_results"]) / self.dataset_name / f"{trainer}__nnUNetPlans__3d_fullres"

    def run(self, title: str, cmd: list[str], **env) -> float:
        """Run a stock command, echo its progress lines, raise with its tail on failure; returns seconds."""
        print(f"\n==> {title}\n    $ {' '.join(cmd)}", flush=True)
        exe = shutil.which(cmd[0], path=str(Path(sys.executable).parent)) or cmd[0]
        t0, tail = time.time(), []
        with subprocess.Popen([exe, *cmd[1:]], env={**self.env, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as p:
            for line in p.stdout:
                tail = (tail + [line])[-40:]
                if _SHOW.search(line):
                    print("    " + line.rstrip()[-160:], flush=True)
        if p.returncode:
            raise SystemExit(f"nnunet-ext demo: `{' '.join(cmd)}` failed (exit {p.returncode}):\n{''.join(tail)}")
        dt = time.time() - t0
        print(f"    done in {dt:.0f} s", flush=True)
        return dt


def run(args) -> int:
    import torch

    from nnunet_ext.data import demo as demo_data
    from nnunet_ext.trainers.variants import parse_variant

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("nnunet-ext demo: --device cuda but torch sees no CUDA device; use --device cpu")
    if any(parse_variant(t) for t in args.trainer):
        raise SystemExit("nnunet-ext demo: give the base trainer name (e.g. UNETRPPTrainer); "
                         "the demo picks the short-run variant from --epochs/--iters")
    if len(set(args.trainer)) != len(args.trainer):
        raise SystemExit("nnunet-ext demo: --trainer names a trainer twice")
    if sorted(set(args.folds)) != sorted(args.folds) or not all(0 <= f <= 4 for f in args.folds):
        raise SystemExit("nnunet-ext demo: --folds takes distinct folds from 0 1 2 3 4")
    for t in args.trainer:
        _check_trainer(t)

    dataset_id = args.dataset_id or demo_data.DEMO_DATASET_ID
    name = demo_data.demo_dataset_path("", dataset_id).name
    wf = Workflow(dataset_id, name, device)
    t_start = time.time()
    print(f"nnunet-ext demo: {', '.join(args.trainer)} ({args.epochs} epochs x {args.iters} iterations, folds "
          f"{' '.join(map(str, args.folds))}) on {device}\n  nnUNet_raw={wf.env['nnUNet_raw']}\n"
          f"  nnUNet_preprocessed={wf.env['nnUNet_preprocessed']}\n  nnUNet_results={wf.env['nnUNet_results']}")

    # 1. data
    if demo_data.find_demo_dataset(wf.raw, dataset_id) is None:
        print("\n==> building the demo dataset from the MNI152 templates in nilearn")
    else:
        print(f"\n==> reusing the demo dataset in {wf.raw / name}")
    raw_dir = demo_data.build_demo_dataset(wf.raw, dataset_id=dataset_id, spacing_mm=args.spacing)

    # 2. plan + preprocess
    if not (wf.preprocessed / "nnUNetPlans.json").is_file() or not (wf.preprocessed / "nnUNetPlans_3d_fullres").is_dir():
        wf.run("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres",
                                       "-np", wf.env["nnUNet_def_n_proc"], "--verify_dataset_integrity"])
    else:
        print(f"\n==> reusing plans and preprocessed data in {wf.preprocessed}")

    # 3.-6. per trainer, on the same data
    rows = [_run_trainer(wf, base, args, raw_dir) for base in args.trainer]
    if len(rows) > 1:
        table = _comparison_table(rows)
        print("\n==> Side by side (same data, plans, epochs and iterations; s/iteration: median of nnU-Net's "
              f"train_step after the first epoch, on {device})\n    " + table.replace("\n", "\n    "))
        from nnunet_ext.evaluation.folder import write_json

        wf.out.mkdir(parents=True, exist_ok=True)
        stem = f"comparison_{'-'.join(args.trainer)}_{args.epochs}x{args.iters}"
        (wf.out / f"{stem}.md").write_text(table + "\n")
        write_json(rows, wf.out / f"{stem}.json")
        print(f"    written to {wf.out / stem}.md and .json")
    print(f"\nTotal wall time {time.time() - t_start:.0f} s.")
    return 0


def _run_trainer(wf: Workflow, base: str, args, raw_dir: Path) -> dict:
    """Train ``base``'s short-run variant on the requested folds, pick the configuration (five folds),
    predict and evaluate the held-out cases; returns the row of the comparison table."""
    from nnunet_ext.trainers.variants import read_step_times, variant_name

    trainer = variant_name(base, args.epochs, args.iters)
    out_dir = wf.out / trainer
    folds_dir = wf.results(trainer)
    print(f"\n######## {trainer}")

    # 3. train
    wall_file = out_dir / "training_wall_seconds.json"
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    for fold in args.folds:
        if (folds_dir / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            print(f"\n==> fold {fold}: reusing the trained model in {folds_dir / f'fold_{fold}'}")
            continue
        wall[str(fold)] = wf.run(f"training fold {fold}", ["nnUNetv2_train", str(wf.dataset_id), "3d_fullres",
                                                           str(fold), "-tr", trainer, "-device", wf.device])
        out_dir.mkdir(parents=True, exist_ok=True)
        wall_file.write_text(json.dumps(wall, indent=1) + "\n")
    val_dice = {f: _validation_dice(folds_dir / f"fold_{f}") for f in args.folds}
    print("\n==> cross-validation Dice (nnU-Net's validation of each fold): "
          + ", ".join(f"fold {f} {d:.3f}" for f, d in val_dice.items()))

    # 4. five folds: nnU-Net's model selection (cross-validation Dice, postprocessing)
    best = None
    if sorted(args.folds) == [0, 1, 2, 3, 4]:
        wf.run("find best configuration", ["nnUNetv2_find_best_configuration", str(wf.dataset_id), "-c", "3d_fullres",
                                           "-tr", trainer, "-f", "0", "1", "2", "3", "4",
                                           "-np", wf.env["nnUNet_def_n_proc"]])
        info = json.loads((folds_dir.parent / "inference_information.json").read_text())["best_model_or_ensemble"]
        best = {"models": [f"{m['trainer']}__{m['plans_identifier']}__{m['configuration']}"
                           for m in info["selected_model_or_models"]],
                "crossval_dice": info["result_on_crossval_pre_pp"],
                "crossval_dice_postprocessed": info["result_on_crossval_post_pp"],
                "postprocessing_file": info["postprocessing_file"], "plans_file": info["some_plans_file"]}
        print(f"    best: {', '.join(best['models'])}; cross-validation Dice {best['crossval_dice']:.4f} "
              f"({best['crossval_dice_postprocessed']:.4f} with its postprocessing)")

    # 5. predict the held-out cases (reused when newer than every checkpoint)
    pred_dir = out_dir / "test_predictions"
    checkpoints = [folds_dir / f"fold_{f}" / "checkpoint_final.pth" for f in args.folds]
    if _predictions_up_to_date(raw_dir / "imagesTs", pred_dir, checkpoints):
        print(f"\n==> reusing the test predictions in {pred_dir}")
    else:
        wf.run("predicting the held-out test cases", [
            "nnUNetv2_predict", "-i", str(raw_dir / "imagesTs"), "-o", str(pred_dir), "-d", str(wf.dataset_id),
            "-c", "3d_fullres", "-tr", trainer, "-f", *map(str, args.folds), "-device", wf.device,
            "-npp", "1", "-nps", "1"])
    if best is not None:  # what nnU-Net's inference_instructions.txt says to run next
        pp_dir = out_dir / "test_predictions_postprocessed"
        wf.run("applying the selected postprocessing", [
            "nnUNetv2_apply_postprocessing", "-i", str(pred_dir), "-o", str(pp_dir), "-pp_pkl_file",
            best["postprocessing_file"], "-np", "1", "-plans_json", best["plans_file"]])
        pred_dir = pp_dir

    # 6. evaluate
    res = _report(raw_dir, pred_dir, out_dir)
    print(f"    models: {folds_dir}\n    predictions: {pred_dir}")
    steps = [read_step_times(folds_dir / f"fold_{f}") for f in args.folds]
    steps = [s["median_s_per_iteration"] for s in steps if s]
    return {"trainer": trainer, "folds": list(args.folds),
            "s_per_iteration": statistics.median(steps) if steps else None,
            "training_wall_s": sum(wall[str(f)] for f in args.folds) if all(str(f) in wall for f in args.folds)
            else None,
            "validation_dice": {str(f): d for f, d in val_dice.items()}, "best_configuration": best,
            "test_dice": {res["labels"][k]: m["dice"] for k, m in res["mean"].items()},
            "test_overall": res["overall"]}


def _validation_dice(fold_dir: Path) -> float:
    """Foreground-mean Dice of nnU-Net's validation of one fold (``validation/summary.json``)."""
    return json.loads((fold_dir / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]


def _predictions_up_to_date(images: Path, pred_dir: Path, checkpoints: list[Path]) -> bool:
    cases = [p.name[:-len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz")]
    preds = [pred_dir / f"{c}.nii.gz" for c in cases]
    if not cases or not all(p.is_file() for p in preds):
        return False
    return min(p.stat().st_mtime for p in preds) > max(c.stat().st_mtime for c in checkpoints)


def _comparison_table(rows: list[dict]) -> str:
    """Markdown: one row per trainer; s/iteration also as a ratio to stock nnUNetTrainer's when present."""
    from nnunet_ext.evaluation.folder import format_number as num

    ref = next((r["s_per_iteration"] for r in rows if r["trainer"].startswith("nnUNetTrainer_")), None)
    classes = list(rows[0]["test_dice"])
    head = (["trainer", "s/iteration", "× nnU-Net", "training wall s", "validation Dice (folds)"]
            + [f"test Dice {c}" for c in classes] + ["test Dice mean", "HD95 mm", "NSD@1mm"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s, o = r["s_per_iteration"], r["test_overall"]
        ratio = s / ref if s is not None and ref else None
        vals = [r["trainer"], num(s, 2), num(ratio, 2), num(r["training_wall_s"], 0),
                " / ".join(num(d, 3) for d in r["validation_dice"].values())]
        vals += [num(r["test_dice"][c], 3) for c in classes] + [num(o["dice"], 3), num(o["hd95"], 2), num(o["nsd"], 3)]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _check_trainer(name: str) -> None:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        from nnunet_ext.architectures import available_architectures, get_architecture

        known = ", ".join(get_architecture(a).trainer for a in available_architectures())
        raise SystemExit(f"nnunet-ext demo: unknown trainer '{name}'; ours: {known} (or stock nnUNetTrainer)") from None


def _report(raw_dir: Path, pred_dir: Path, out_dir: Path, overlays: bool = True) -> dict:
    """Dice / HD95 / NSD per class per case and means (printed, and written as JSON and CSV), and a
    PNG overlay per test case."""
    from nnunet_ext.evaluation.folder import evaluate_folders, format_summary, write_csv, write_json
    from nnunet_ext.evaluation.overlay import save_overlay

    res = evaluate_folders(raw_dir / "labelsTs", pred_dir, dataset_json=raw_dir / "dataset.json",
                           num_processes=1, progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(res, out_dir / "test_metrics.json")
    write_csv(res, out_dir / "test_metrics.csv")
    keys = list(res["labels"])
    print("\n==> Held-out test cases (Dice per class)")
    print("    " + "case".ljust(14) + "".join(f"{res['labels'][k]:>16}" for k in keys))
    for case in res["cases"]:
        print("    " + case["case"].ljust(14) + "".join(f"{case['metrics'][k]['dice']:>16.3f}" for k in keys))
    print("    " + "mean".ljust(14) + "".join(f"{res['mean'][k]['dice']:>16.3f}" for k in keys)
          + f"   (mean over classes {res['overall']['dice']:.3f})\n")
    print("    " + format_summary(res).replace("\n", "\n    "))
    if overlays:
        for case in res["cases"]:
            png = save_overlay(raw_dir / "imagesTs" / f"{case['case']}_0000.nii.gz", case["reference_file"],
                               case["prediction_file"], out_dir / "overlays" / f"{case['case']}.png",
                               title=f"{case['case']}: image | reference | prediction")
        print(f"    overlays: {png.parent}")
    print(f"    metrics: {out_dir / 'test_metrics.json'} and .csv")
    return res
