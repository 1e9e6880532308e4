"""The demo's steps: the whole nnU-Net workflow on the demo dataset, with stock commands.

Steps (each skipped when its output exists and was made from the same inputs, so re-running
reuses the work):
1. build the demo dataset (MNI152 template from the installed nilearn, see :mod:`.dataset`);
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres``;
3. ``nnUNetv2_train ... -tr <Trainer>_<E>epochs_<I>iters`` for each fold;
4. with all five folds: ``nnUNetv2_find_best_configuration``;
5. ``nnUNetv2_predict`` of the held-out test cases (ensemble of the trained folds), then with five
   folds ``nnUNetv2_apply_postprocessing`` with the postprocessing the previous step selected;
6. evaluation against the held-out labels (Dice, HD95, NSD per class and case) and PNG overlays
   (:mod:`.report`).

Steps 3-6 run for each trainer given; with several, a table compares them (test Dice, HD95, NSD,
cross-validation Dice, and seconds per training iteration that the variants' step timing wrote).

What is reused, and when:

- the dataset, when its ``dataset.json`` records the requested settings (the spacing). Built with
  other settings, it is rebuilt in place: nnU-Net finds a dataset by its id, so one id holds one
  dataset (another id keeps another spacing beside it). Plans, preprocessed data and trained
  models made from other data are removed first, with a line saying so: nnU-Net copies
  ``dataset.json`` into each of them, and one whose copy records other settings does not fit the
  data. Only what the demo wrote goes (its manifest, :mod:`.manifest`, lists it; a folder of the
  dataset's id that the demo did not write stops it with one line), and trained models only with
  ``--yes`` or a "y" typed on a terminal;
- a trained fold, when its ``checkpoint_final.pth`` exists (the trainer name carries the budget); when
  its validation (``validation/summary.json``) is missing, a run stopped after training: then only
  ``nnUNetv2_train ... --val`` runs;
- test predictions, per trainer and set of folds (``nnunet_ext_demo/<trainer>/folds_<f>``), when the
  stamp written beside them after ``nnUNetv2_predict`` names the same trainer, folds, checkpoints
  (size and modification time) and dataset settings. The metrics and overlays of a run are written
  beside its predictions.

One demo at a time runs on the same folders (a lock beside the manifest; a second refuses at once,
naming the first's process). Every step prints what it runs or reuses; a step that cannot go on
raises :class:`DemoError`, whose message names the cause and the fix.
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

from nnunet_ext.demo import dataset as demo_data
from nnunet_ext.demo.curves import mean_curve, read_curve, read_log, save_learning_curves
from nnunet_ext.demo.manifest import MANIFEST_NAME, ROOTS, DemoError, Manifest, demo_lock
from nnunet_ext.demo.report import comparison_table, report_test_cases
from nnunet_ext.io import write_json, write_text

#: default trainer and budget: of the papers' networks, MISSU trains fastest per iteration on a CPU,
#: and this budget is small enough for a CPU while it already learns the demo task
DEFAULT_TRAINER = "MISSUTrainer"
DEFAULT_EPOCHS = 10
DEFAULT_ITERS = 15
#: written beside a run's test predictions: what they were made from (see :func:`prediction_stamp`)
PREDICTION_STAMP = "nnunet_ext_demo_predictions.json"

#: lines of the stock commands' output echoed while they run (training progress, the variants'
#: ``Train step`` lines, errors)
_SHOW = re.compile(r"(Epoch \d+|Train step|train_loss|val_loss|Pseudo dice|Epoch time|Mean Validation Dice|"
                   r"Traceback|Error|error:)")


class Workflow:
    """Paths and a subprocess runner shared by the demo steps."""

    def __init__(self, dataset_id: int, dataset_name: str, device: str):
        self.env = dict(os.environ)
        base = Path.cwd() / "nnunet_ext_demo"
        paths = {}
        for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
            given = bool(self.env.get(var))
            if not given:
                self.env[var] = str(base / sub)
            paths[var] = Path(self.env[var])
            _check_writable_folder(var, paths[var], given)  # all three before any is created
        for var, path in paths.items():
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DemoError(f"cannot create {var} '{path}' ({e.strerror or e}); set {var} to a writable "
                                f"folder") from None
        # 2-core friendly defaults; a user's own settings win
        ncpu = os.cpu_count() or 2
        self.env.setdefault("nnUNet_n_proc_DA", str(max(1, min(ncpu - 1, 4))))
        self.env.setdefault("nnUNet_def_n_proc", str(max(1, min(ncpu, 4))))
        self.dataset_id, self.dataset_name, self.device = dataset_id, dataset_name, device
        self.out = self.results_root / "nnunet_ext_demo"
        #: what the demo wrote (:mod:`.manifest`); read under the lock by :func:`run_demo`
        self.manifest: Manifest | None = None

    @property
    def state_folder(self) -> Path:
        """Where the manifest and the lock live: ``$nnUNet_results``."""
        return Path(self.env["nnUNet_results"])

    def folder(self, root: str) -> Path:
        """The dataset's folder in ``root`` ('preprocessed' or 'results')."""
        return self.preprocessed if root == "preprocessed" else self.results_root

    @property
    def raw(self) -> Path:
        return Path(self.env["nnUNet_raw"])

    @property
    def preprocessed(self) -> Path:
        return Path(self.env["nnUNet_preprocessed"]) / self.dataset_name

    @property
    def results_root(self) -> Path:
        """``nnUNet_results/DatasetXXX_Name``: the trained models and the demo's own outputs."""
        return Path(self.env["nnUNet_results"]) / self.dataset_name

    def results(self, trainer: str) -> Path:
        return self.results_root / f"{trainer}__nnUNetPlans__3d_fullres"

    def run(self, title: str, cmd: list[str], **env) -> float:
        """:meth:`execute` a stock command; what it creates in the dataset's preprocessed and results
        folders is recorded in the manifest as the demo's (also when it fails midway)."""
        if self.manifest is None:
            return self.execute(title, cmd, **env)
        before = {root: _entries(self.folder(root)) for root in ROOTS}
        try:
            return self.execute(title, cmd, **env)
        finally:
            for root in ROOTS:
                self.manifest.add_entries(self.dataset_name, root, _entries(self.folder(root)) - before[root])

    def execute(self, title: str, cmd: list[str], **env) -> float:
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
            raise DemoError(f"`{' '.join(cmd)}` failed (exit {p.returncode}):\n{''.join(tail)}")
        dt = time.time() - t0
        print(f"    done in {dt:.0f} s", flush=True)
        return dt


def _check_writable_folder(var: str, path: Path, given: bool) -> None:
    """One line naming ``var`` unless ``path`` is, or can be created as, a writable folder."""
    fix = (f"set {var} to a writable folder" if given else
           f"run the demo in a writable folder or set {var} (and the other nnUNet_* paths)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ('{existing}' is a file)"
        raise DemoError(f"{var} '{path}' is not a folder{where}; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DemoError(f"{var} '{path}' is not writable ('{existing}' is read-only for this user); {fix}")


def check_trainer(name: str) -> None:
    """A base trainer name (the demo picks the short-run variant) that nnU-Net's trainer search finds."""
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.trainers.variants import parse_variant

    if parse_variant(name):
        raise DemoError("give the base trainer name (e.g. UNETRPPTrainer); "
                        "the demo picks the short-run variant from --epochs/--iters")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        from nnunet_ext.architectures import available_architectures, get_architecture

        known = ", ".join(get_architecture(a).trainer for a in available_architectures())
        raise DemoError(f"unknown trainer '{name}'; ours: {known} (or stock nnUNetTrainer)") from None


def run_demo(trainers: list[str], epochs: int, iters: int, folds: list[int], device: str,
             spacing_mm: float = demo_data.DEMO_SPACING_MM, dataset_id: int = demo_data.DEMO_DATASET_ID,
             assume_yes: bool = False) -> list[dict]:
    """Steps 1-6 for each of ``trainers`` (base names) on the same data; returns the comparison rows.

    Paths follow nnU-Net's variables, else ``./nnunet_ext_demo/{raw,preprocessed,results}``. The
    whole run holds the demo's lock (:func:`.manifest.demo_lock`); ``assume_yes``: remove trained
    models made from other data without asking.
    """
    for t in trainers:
        check_trainer(t)
    wf = Workflow(dataset_id, demo_data.demo_dataset_path("", dataset_id).name, device)
    with demo_lock(wf.state_folder):
        wf.manifest = Manifest(wf.state_folder / MANIFEST_NAME)
        return _run_locked(wf, trainers, epochs, iters, folds, spacing_mm, assume_yes)


def _run_locked(wf: Workflow, trainers: list[str], epochs: int, iters: int, folds: list[int], spacing_mm: float,
                assume_yes: bool) -> list[dict]:
    dataset_id, device = wf.dataset_id, wf.device
    t_start = time.time()
    print(f"nnunet-ext demo: {', '.join(trainers)} ({epochs} epochs x {iters} iterations, folds "
          f"{' '.join(map(str, folds))}) on {device}\n  nnUNet_raw={wf.env['nnUNet_raw']}\n"
          f"  nnUNet_preprocessed={wf.env['nnUNet_preprocessed']}\n  nnUNet_results={wf.env['nnUNet_results']}")

    # 1. data (rebuilt when its settings differ; what was made from other data is removed)
    raw_dir = prepare_dataset(wf, spacing_mm, assume_yes)

    # 2. plan + preprocess (--clean: a fingerprint left by an interrupted run may be of other data)
    if not _preprocessed_complete(wf, raw_dir):
        wf.run("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres",
                                       "-np", wf.env["nnUNet_def_n_proc"], "--verify_dataset_integrity", "--clean"])
    else:
        print(f"\n==> reusing plans and preprocessed data in {wf.preprocessed}")

    # 3.-6. per trainer, on the same data
    rows = [run_trainer(wf, base, epochs, iters, folds, raw_dir) for base in trainers]
    if len(rows) > 1:
        table = comparison_table(rows)
        print("\n==> Side by side (same data, plans, epochs and iterations; s/iteration: median of nnU-Net's "
              f"train_step after the first epoch, on {device})\n    " + table.replace("\n", "\n    "))
        stem = wf.out / f"comparison_{'-'.join(trainers)}_{epochs}x{iters}_{folds_tag(folds)}"
        png = save_learning_curves({r["trainer"]: r["curve"] for r in rows}, Path(f"{stem}_learning_curves.png"),
                                   title=f"{wf.dataset_name}, {folds_tag(folds)}, {epochs} x {iters} iterations")
        write_text(f"{table}\n\n![learning curves]({png.name})\n", f"{stem}.md")
        write_json(rows, f"{stem}.json")
        print(f"    written to {stem}.md and .json; learning curves: {png}")
        if sorted(folds) == [0, 1, 2, 3, 4]:
            compare_cross_validation(wf, [r["trainer"] for r in rows], f"{stem.name}_crossval")
    print(f"\nTotal wall time {time.time() - t_start:.0f} s.")
    return rows


def compare_cross_validation(wf: Workflow, trainers: list[str], name: str) -> Path:
    """``nnunet-ext compare`` on the trainers' five-fold cross-validation (the first is the baseline):
    prints its table and writes its files to ``<demo outputs>/<name>``; returns that folder."""
    from nnunet_ext.evaluation.cases import EvaluationError
    from nnunet_ext.evaluation.compare import compare_trainers, format_summary

    print("\n==> Cross-validation compared (nnunet-ext compare: every validation case of the five folds, "
          "paired statistics against the first trainer)")
    try:
        result = compare_trainers(wf.dataset_name, "3d_fullres", trainers, out=wf.out / name,
                                  results_dir=wf.env["nnUNet_results"],
                                  preprocessed_dir=wf.env["nnUNet_preprocessed"], progress=False, num_processes=1)
    except EvaluationError as e:
        raise DemoError(f"comparing the cross-validation: {e}") from None
    print("    " + format_summary(result).replace("\n", "\n    ") + f"\n    written to {result['out']}")
    return Path(result["out"])


# ---------------------------------------------------------------------------------- steps 1-2: data
def prepare_dataset(wf: Workflow, spacing_mm: float, assume_yes: bool = False) -> Path:
    """The raw demo dataset at ``spacing_mm``: reused when its dataset.json records these settings,
    else built (in place of one with other settings). First the dataset's folders must be the demo's
    (:func:`_check_ownership`); what the demo made from other data is removed (:func:`_remove_stale`,
    asking first for trained models) before the raw data is rebuilt."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        root = Path(wf.env[var])
        clash = sorted(p.name for p in root.glob(f"Dataset{wf.dataset_id:03d}_*")
                       if p.is_dir() and p.name != wf.dataset_name)
        if clash:
            raise DemoError(f"dataset id {wf.dataset_id} is already used by {clash[0]} in {var} '{root}' "
                            f"(nnU-Net finds datasets by id); pass another --dataset-id")
    wanted = demo_data.demo_settings(spacing_mm=spacing_mm)
    target = wf.raw / wf.dataset_name
    record = demo_data.demo_record(target)
    if target.exists() and record is None:
        raise DemoError(f"'{target}' exists but is not a demo dataset (its dataset.json has no nnunet-ext demo "
                        f"record); move it away or pass another --dataset-id")
    if wf.manifest is None:
        wf.manifest = Manifest(wf.state_folder / MANIFEST_NAME)
    _check_ownership(wf)
    _remove_stale(wf, wanted, assume_yes)
    rebuild = False
    if record is None:
        print("\n==> building the demo dataset from the MNI152 templates in nilearn")
    elif not demo_data.same_settings(record, wanted):
        print(f"\n==> the demo dataset in {target} was built {_describe(record, wanted)}; rebuilding it at "
              f"{spacing_mm:g} mm")
        rebuild = True
    elif demo_data.find_demo_dataset(wf.raw, wf.dataset_id) is None:
        print(f"\n==> the demo dataset in {target} is incomplete; rebuilding it")
        rebuild = True
    else:
        print(f"\n==> reusing the demo dataset in {target}")
    raw_dir = demo_data.build_demo_dataset(wf.raw, dataset_id=wf.dataset_id, spacing_mm=spacing_mm, overwrite=rebuild)
    wf.manifest.set_settings(wf.dataset_name, spacing_mm)
    return raw_dir


def _describe(record: dict | None, wanted: dict) -> str:
    """How a generator record differs from the wanted settings, e.g. ``at 8 mm``."""
    if record is None:
        return "from data that is not a demo dataset"
    if record.get("spacing_mm") != wanted["spacing_mm"] and isinstance(record.get("spacing_mm"), (int, float)):
        return f"at {record['spacing_mm']:g} mm"
    return "with other settings (" + ", ".join(f"{k} {record.get(k)}" for k in demo_data.SETTING_KEYS
                                                if record.get(k) != wanted[k]) + ")"


def _entries(folder: Path) -> set[str]:
    """The names in ``folder`` (none when it does not exist)."""
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _model_folders(folder: Path) -> list[Path]:
    """nnU-Net's model folders (``Trainer__Plans__configuration``) in a dataset's results folder."""
    return sorted(p for p in folder.glob("*__*__*") if p.is_dir())


def _made_by_earlier_demo(root: str, folder: Path) -> bool:
    """A folder an nnunet-ext demo without a manifest wrote: nnU-Net's copies of dataset.json in it
    (the preprocessed folder's; every model folder's, at least one) carry the demo's record."""
    if root == "preprocessed":
        return demo_data.demo_record(folder) is not None
    models = _model_folders(folder)
    return bool(models) and all(demo_data.demo_record(m) is not None for m in models)


def _check_ownership(wf: Workflow) -> None:
    """The dataset's preprocessed and results folders must be the demo's: listed in its manifest,
    not there yet (then the demo creates them), empty, or written by an earlier demo (adopted).
    Any other stops the demo with one line, before anything is written."""
    name, manifest = wf.dataset_name, wf.manifest
    for root in ROOTS:
        folder = wf.folder(root)
        if manifest.folder(name, root, folder) is not None:
            continue
        entries = _entries(folder)
        if not folder.exists() or not entries:
            manifest.claim(name, root, folder, created=not folder.exists())
        elif _made_by_earlier_demo(root, folder):
            manifest.claim(name, root, folder, created=True, entries=entries)
        else:
            raise DemoError(f"'{folder}' holds data the demo did not write (it is not in the demo's manifest "
                            f"'{manifest.path}'), so the demo leaves it alone; pass another --dataset-id")


def _remove_stale(wf: Workflow, wanted: dict, assume_yes: bool = False) -> None:
    """Remove, from the dataset's preprocessed and results folders, the entries the demo wrote
    (plans, preprocessed data, trained models, its outputs) when any of them was made from a demo
    dataset with other settings: nnU-Net copies dataset.json into the preprocessed folder and every
    model folder, so their records tell. Trained models go only with ``assume_yes`` or a "y" on a
    terminal; files a user put there stay."""
    name, manifest = wf.dataset_name, wf.manifest
    owned = {root: manifest.folder(name, root, wf.folder(root))["entries"] for root in ROOTS}
    made = ([wf.preprocessed] if "dataset.json" in owned["preprocessed"] else []) + [
        m for m in _model_folders(wf.results_root) if m.name in owned["results"]]
    made = [f for f in made if (f / "dataset.json").is_file()]
    stale = next((f for f in made if not demo_data.same_settings(demo_data.demo_record(f), wanted)), None)
    if stale is None:
        return
    why = (f"made from the demo dataset {_describe(demo_data.demo_record(stale), wanted)}, they do not fit the "
           f"{wanted['spacing_mm']:g} mm data")
    doomed = [wf.folder(root) / e for root in ROOTS for e in owned[root] if (wf.folder(root) / e).exists()]
    models = [m for m in doomed if m.is_dir() and any(m.glob("fold_*/checkpoint*.pth"))]
    if models:
        _confirm_removal(models, why, assume_yes)
    shown = " and ".join(str(wf.folder(r)) for r in ROOTS if owned[r] and wf.folder(r).exists())
    print(f"\n==> removing what the demo wrote in {shown}: {why} (give each spacing its own --dataset-id to "
          f"keep both)")
    for root in ROOTS:
        folder = wf.folder(root)
        for entry in owned[root]:
            path = folder / entry
            try:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            except OSError as e:
                raise DemoError(f"cannot remove '{path}' ({e.strerror or e}); remove it by hand") from None
        manifest.remove_entries(name, root, owned[root])
        kept = sorted(_entries(folder))
        if kept:
            print(f"    kept in {folder} (not written by the demo): {', '.join(kept)}")
        elif folder.exists() and manifest.folder(name, root, folder)["created"]:
            folder.rmdir()


def _confirm_removal(models: list[Path], why: str, assume_yes: bool) -> None:
    """Go on only with ``assume_yes`` or a "y" typed on a terminal; else one line naming the fix."""
    shown = ", ".join(str(m) for m in models)
    if assume_yes:
        return
    if sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"\nThe demo would remove its trained model(s) {shown} ({why}). Remove them? [y/N] ")
        if answer.strip().lower() in ("y", "yes"):
            return
        raise DemoError("nothing removed; pass another --dataset-id to keep these models and train beside them")
    raise DemoError(f"the demo would remove its trained model(s) {shown} ({why}); pass --yes to remove them, or "
                    f"another --dataset-id to keep them")


def _preprocessed_complete(wf: Workflow, raw_dir: Path) -> bool:
    """nnU-Net's plans and a preprocessed case (its properties file, written last) per training case."""
    data = wf.preprocessed / "nnUNetPlans_3d_fullres"
    if not ((wf.preprocessed / "nnUNetPlans.json").is_file() and (wf.preprocessed / "dataset.json").is_file()
            and data.is_dir()):
        return False
    cases = _cases(raw_dir / "imagesTr")
    return bool(cases) and all((data / f"{c}.pkl").is_file() for c in cases)


def _cases(images: Path) -> list[str]:
    return sorted(p.name[:-len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))


# ---------------------------------------------------------------------------------- steps 3-6: per trainer
def run_trainer(wf: Workflow, base: str, epochs: int, iters: int, folds: list[int], raw_dir: Path) -> dict:
    """Train ``base``'s short-run variant on ``folds``, pick the configuration (five folds), predict
    and evaluate the held-out cases; returns the row of the comparison table."""
    from nnunet_ext.trainers.timing import read_step_times
    from nnunet_ext.trainers.variants import variant_name

    trainer = variant_name(base, epochs, iters)
    out_dir = wf.out / trainer
    folds_dir = wf.results(trainer)
    print(f"\n######## {trainer}")

    if wf.manifest is not None:  # the demo's own outputs
        wf.manifest.add_entries(wf.dataset_name, "results", [wf.out.name])

    # 3. train
    wall_file = out_dir / "training_wall_seconds.json"
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    for fold in folds:
        train = ["nnUNetv2_train", str(wf.dataset_id), "3d_fullres", str(fold), "-tr", trainer, "-device", wf.device]
        fold_dir = folds_dir / f"fold_{fold}"
        if not (fold_dir / "checkpoint_final.pth").is_file():
            wall[str(fold)] = wf.run(f"training fold {fold}", train)
            write_json(wall, wall_file)
        elif not (fold_dir / "validation" / "summary.json").is_file():
            # stopped after training, before nnU-Net's validation finished: run only the validation
            print(f"\n==> fold {fold}: reusing the trained model in {fold_dir}; its validation did not finish")
            wf.run(f"validating fold {fold}", [*train, "--val"])
        else:
            print(f"\n==> fold {fold}: reusing the trained model in {fold_dir}")
    val_dice = {f: _validation_dice(folds_dir / f"fold_{f}") for f in folds}
    curve = mean_curve([read_curve(read_log(folds_dir / f"fold_{f}"), iters) for f in folds])
    print("\n==> cross-validation Dice (nnU-Net's validation of each fold): "
          + ", ".join(f"fold {f} {d:.3f}" for f, d in val_dice.items()))

    # 4. five folds: nnU-Net's model selection (cross-validation Dice, postprocessing)
    best = _find_best_configuration(wf, trainer, folds_dir) if sorted(folds) == [0, 1, 2, 3, 4] else None

    # 5. predict the held-out cases: one folder per set of folds, reused only when its stamp matches
    run_dir = out_dir / folds_tag(folds)
    pred_dir = run_dir / "test_predictions"
    checkpoints = {f: folds_dir / f"fold_{f}" / "checkpoint_final.pth" for f in folds}
    stamp = prediction_stamp(trainer, checkpoints, raw_dir)
    if _predictions_reusable(pred_dir, stamp):
        print(f"\n==> reusing the test predictions in {pred_dir} (folds {' '.join(map(str, sorted(folds)))})")
    else:
        shutil.rmtree(pred_dir, ignore_errors=True)  # stale or partial: never mixed with the new ones
        wf.run("predicting the held-out test cases", [
            "nnUNetv2_predict", "-i", str(raw_dir / "imagesTs"), "-o", str(pred_dir), "-d", str(wf.dataset_id),
            "-c", "3d_fullres", "-tr", trainer, "-f", *map(str, folds), "-device", wf.device,
            "-npp", "1", "-nps", "1"])
        write_json(stamp, pred_dir / PREDICTION_STAMP)
    if best is not None:  # what nnU-Net's inference_instructions.txt says to run next
        pp_dir = run_dir / "test_predictions_postprocessed"
        shutil.rmtree(pp_dir, ignore_errors=True)
        wf.run("applying the selected postprocessing", [
            "nnUNetv2_apply_postprocessing", "-i", str(pred_dir), "-o", str(pp_dir), "-pp_pkl_file",
            best["postprocessing_file"], "-np", "1", "-plans_json", best["plans_file"]])
        pred_dir = pp_dir

    # 6. evaluate
    res = report_test_cases(raw_dir, pred_dir, run_dir)
    png = save_learning_curves({trainer: curve}, run_dir / "learning_curves.png",
                               title=f"{wf.dataset_name}, {folds_tag(folds)}")
    print(f"    learning curves: {png}\n    models: {folds_dir}\n    predictions: {pred_dir}")
    steps = [read_step_times(folds_dir / f"fold_{f}") for f in folds]
    steps = [s["median_s_per_iteration"] for s in steps if s]
    return {"trainer": trainer, "folds": list(folds),
            "s_per_iteration": statistics.median(steps) if steps else None,
            "training_wall_s": sum(wall[str(f)] for f in folds) if all(str(f) in wall for f in folds) else None,
            "validation_dice": {str(f): d for f, d in val_dice.items()}, "best_configuration": best,
            "test_dice": {res["labels"][k]: m["dice"] for k, m in res["mean"].items()},
            "test_overall": res["overall"], "curve": curve}


def _validation_dice(fold_dir: Path) -> float:
    """Foreground-mean Dice of nnU-Net's validation of one fold (``validation/summary.json``)."""
    return json.loads((fold_dir / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]


def _find_best_configuration(wf: Workflow, trainer: str, folds_dir: Path) -> dict:
    """``nnUNetv2_find_best_configuration`` of the five folds: the selected models, their
    cross-validation Dice and the postprocessing to apply."""
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
    return best


def folds_tag(folds) -> str:
    """The name of a run's folder: ``folds_0``, ``folds_0_1_2_3_4``."""
    return "folds_" + "_".join(map(str, sorted(folds)))


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def prediction_stamp(trainer: str, checkpoints: dict[int, Path], raw_dir: Path) -> dict:
    """What a run's test predictions were made from: trainer (with its budget), folds and the
    identity of each fold's checkpoint, the test cases, and the dataset's settings."""
    return {"trainer": trainer, "folds": sorted(checkpoints),
            "checkpoints": {str(f): _file_identity(c) for f, c in sorted(checkpoints.items())},
            "test_cases": _cases(raw_dir / "imagesTs"), "dataset": demo_data.demo_record(raw_dir)}


def _predictions_reusable(pred_dir: Path, stamp: dict) -> bool:
    """Whether ``pred_dir`` holds every test case's prediction and a stamp equal to ``stamp``."""
    try:
        old = json.loads((pred_dir / PREDICTION_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return old == stamp and bool(stamp["test_cases"]) and all(
        (pred_dir / f"{c}.nii.gz").is_file() for c in stamp["test_cases"])
