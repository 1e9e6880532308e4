"""``nnunet-ext demo``: the whole nnU-Net workflow on the embedded demo dataset, with stock commands.

Steps (each skipped when its output exists, so re-running reuses the work):
1. build the demo dataset (MNI152 template from the installed nilearn, see :mod:`nnunet_ext.data.demo`);
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres``;
3. ``nnUNetv2_train ... -tr <Trainer>_<E>epochs_<I>iters`` for each fold;
4. with all five folds: ``nnUNetv2_find_best_configuration``;
5. ``nnUNetv2_predict`` of the held-out test cases (ensemble of the trained folds);
6. evaluation against the held-out labels (Dice, HD95, NSD per class and case) and PNG overlays.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: default trainer and budget, chosen by measurement on a 2-core CPU (demo patch 40x48x40, batch 2):
#: MISSU trains at ~4 s/iteration there (nnU-Net's U-Net ~5 s, UNETR++ ~28 s) and reached validation
#: Dice 0.81 after 10 x 15 iterations, so it is the best network a 15-minute CPU budget can train.
DEFAULT_TRAINER = "MISSUTrainer"
DEFAULT_EPOCHS = 10
DEFAULT_ITERS = 15
DEMO_SPACING_MM = 4.0

_SHOW = re.compile(r"(Epoch \d+|train_loss|val_loss|Pseudo dice|Epoch time|Mean Validation Dice|"
                   r"Traceback|Error|error:)")


def register(sub) -> None:
    p = sub.add_parser("demo", help="build the demo dataset, plan, train, predict and evaluate with stock nnU-Net")
    p.add_argument("--trainer", default=DEFAULT_TRAINER, help=f"trainer name (default {DEFAULT_TRAINER}; "
                   "see `nnunet-ext trainers`; nnUNetTrainer gives stock nnU-Net for comparison)")
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
    from nnunet_ext.trainers.variants import parse_variant, variant_name

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("nnunet-ext demo: --device cuda but torch sees no CUDA device; use --device cpu")
    if parse_variant(args.trainer):
        raise SystemExit("nnunet-ext demo: give the base trainer name (e.g. UNETRPPTrainer); "
                         "the demo picks the short-run variant from --epochs/--iters")
    if sorted(set(args.folds)) != sorted(args.folds) or not all(0 <= f <= 4 for f in args.folds):
        raise SystemExit("nnunet-ext demo: --folds takes distinct folds from 0 1 2 3 4")
    _check_trainer(args.trainer)

    dataset_id = args.dataset_id or demo_data.DEMO_DATASET_ID
    name = demo_data.demo_dataset_path("", dataset_id).name
    wf = Workflow(dataset_id, name, device)
    trainer = variant_name(args.trainer, args.epochs, args.iters)
    t_start = time.time()
    print(f"nnunet-ext demo: trainer {trainer} ({args.epochs} epochs x {args.iters} iterations, folds "
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

    # 3. train
    train_seconds = {}
    for fold in args.folds:
        if (wf.results(trainer) / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            print(f"\n==> fold {fold}: reusing the trained model in {wf.results(trainer) / f'fold_{fold}'}")
            continue
        train_seconds[fold] = wf.run(f"training fold {fold}", ["nnUNetv2_train", str(dataset_id), "3d_fullres",
                                                                str(fold), "-tr", trainer, "-device", device])

    # 4. five folds: nnU-Net's model selection (cross-validation Dice, postprocessing)
    if sorted(args.folds) == [0, 1, 2, 3, 4]:
        wf.run("find best configuration", ["nnUNetv2_find_best_configuration", str(dataset_id), "-c", "3d_fullres",
                                           "-tr", trainer, "-f", "0", "1", "2", "3", "4",
                                           "-np", wf.env["nnUNet_def_n_proc"]])

    # 5. predict the held-out cases
    pred_dir = wf.out / trainer / "test_predictions"
    wf.run("predicting the held-out test cases", [
        "nnUNetv2_predict", "-i", str(raw_dir / "imagesTs"), "-o", str(pred_dir), "-d", str(dataset_id),
        "-c", "3d_fullres", "-tr", trainer, "-f", *map(str, args.folds), "-device", device,
        "-npp", "1", "-nps", "1"])

    # 6. evaluate
    _report(raw_dir, pred_dir, wf.out / trainer)
    print(f"\nTotal wall time {time.time() - t_start:.0f} s. Models: {wf.results(trainer)}\n"
          f"Predictions: {pred_dir}")
    return 0


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
