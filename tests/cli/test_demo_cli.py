"""`nnunet-ext demo` end to end, at a tiny budget: the README's first command must keep working.

The three runs share one working folder (the :func:`demo_8mm` fixture), as one user's demos would:
the two-trainer run builds, plans and preprocesses the 8 mm dataset and trains fold 0 of
SmallUNetTrainer; the default-trainer run and the five-fold run reuse the data, and the five-fold run
also reuses that fold (the demo's own reuse, which the first test checks).
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.nnunet_cli import BIN, clean_env

pytestmark = pytest.mark.e2e


def _user_env(tmp_path: Path) -> dict:
    """A user's shell: no nnU-Net variables (the demo then works in ./nnunet_ext_demo)."""
    env = clean_env(tmp_path)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_def_n_proc"):
        env.pop(var)
    return env


def _demo(tmp_path: Path, *args: str) -> str:
    env = _user_env(tmp_path)
    p = subprocess.run([str(BIN / "nnunet-ext"), "demo", "--trainer", "SmallUNetTrainer", "nnUNetTrainer",
                        "--epochs", "1", "--iters", "2", "--spacing", "8", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    return p.stdout


@pytest.fixture(scope="module")
def demo_8mm(tmp_path_factory) -> tuple[Path, str]:
    """One working folder for the module's demos, and the output of its first: two trainers on a
    new user's folder (building, planning and preprocessing the 8 mm dataset)."""
    folder = tmp_path_factory.mktemp("demo_8mm")
    return folder, _demo(folder)


def test_demo_runs_the_workflow_for_two_trainers_compares_and_reuses(demo_8mm):
    tmp_path, out = demo_8mm
    root = tmp_path / "nnunet_ext_demo"
    for step in ("plan and preprocess", "training fold 0", "predicting the held-out test cases"):
        assert f"==> {step}" in out
    assert out.count("==> training fold 0") == 2 and out.count("==> plan and preprocess") == 1
    assert "grey_matter" in out and "white_matter" in out and "mean" in out
    results = next((root / "results").glob("Dataset987_*"))
    names = ["SmallUNetTrainer_1epoch_2iters", "nnUNetTrainer_1epoch_2iters"]
    for name in names:
        run = results / "nnunet_ext_demo" / name / "folds_0"
        metrics = json.loads((run / "test_metrics.json").read_text())
        assert len(metrics["cases"]) == 2 and set(metrics["mean"]) == {"1", "2"}
        assert 0.0 <= metrics["overall"]["dice"] <= 1.0
        assert metrics["prediction_folder"] == str(run / "test_predictions")
        assert len(list((run / "overlays").glob("*.png"))) == 2
        # the variant timed its train steps: 2 in one epoch, the first left out as warm-up
        steps = json.loads((results / f"{name}__nnUNetPlans__3d_fullres" / "fold_0" / "train_step_seconds.json")
                           .read_text())
        assert steps["num_timed_iterations"] == 1 and steps["median_s_per_iteration"] > 0
    # the side-by-side table: one row per trainer, ratios to stock nnU-Net, Dice as in the metrics files
    comparison = results / "nnunet_ext_demo" / "comparison_SmallUNetTrainer-nnUNetTrainer_1x2_folds_0.json"
    rows = json.loads(comparison.read_text())
    assert [r["trainer"] for r in rows] == names
    for r in rows:
        metrics = json.loads((results / "nnunet_ext_demo" / r["trainer"] / "folds_0" / "test_metrics.json")
                             .read_text())
        assert r["test_overall"]["dice"] == metrics["overall"]["dice"] and r["s_per_iteration"] > 0
        assert set(r["validation_dice"]) == {"0"} and 0 <= r["validation_dice"]["0"] <= 1
        assert r["training_wall_s"] > 0
        # the learning curve is nnU-Net's log of the fold, against iterations (1 epoch x 2)
        log = torch.load(results / f"{r['trainer']}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth",
                         map_location="cpu", weights_only=False)["logging"]
        assert r["curve"]["iterations"] == [2] and r["curve"]["ema_pseudo_dice"] == [float(log["ema_fg_dice"][0])]
        assert (results / "nnunet_ext_demo" / r["trainer"] / "folds_0" / "learning_curves.png").is_file()
    png = comparison.with_name(comparison.stem + "_learning_curves.png")
    assert f"![learning curves]({png.name})" in comparison.with_suffix(".md").read_text()
    assert png.stat().st_size > 0 and f"learning curves: {png}" in out
    table = out[out.index("==> Side by side"):]
    assert table.count("| SmallUNetTrainer_1epoch_2iters |") == 1 and "| nnUNetTrainer_1epoch_2iters | " in table
    ratio = rows[0]["s_per_iteration"] / rows[1]["s_per_iteration"]
    assert f"| {ratio:.2f} |" in table.splitlines()[3] and "| 1.00 |" in table.splitlines()[4]

    again = _demo(tmp_path)
    assert "==> plan and preprocess" not in again and "reusing the demo dataset" in again
    assert again.count("fold 0: reusing the trained model") == 2
    assert again.count("==> reusing the test predictions") == 2 and "==> predicting" not in again
    assert json.loads(comparison.read_text()) == rows


def test_demo_default_trainer(demo_8mm):
    """`nnunet-ext demo` as the README gives it, with its default trainer (MISSU), at a tiny budget."""
    tmp_path, _ = demo_8mm
    p = subprocess.run([str(BIN / "nnunet-ext"), "demo", "--epochs", "1", "--iters", "2", "--spacing", "8"],
                       cwd=tmp_path, env=_user_env(tmp_path), capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    trainer = "MISSUTrainer_1epoch_2iters"
    assert p.stdout.startswith("nnunet-ext demo: MISSUTrainer (1 epochs x 2 iterations, folds 0)")
    assert f"######## {trainer}" in p.stdout and "==> training fold 0" in p.stdout
    results = tmp_path / "nnunet_ext_demo" / "results" / "Dataset987_NNExtDemo"
    run = results / "nnunet_ext_demo" / trainer / "folds_0"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert len(metrics["cases"]) == 2 and set(metrics["mean"]) == {"1", "2"}
    assert 0.0 <= metrics["overall"]["dice"] <= 1.0
    stamp = json.loads((run / "test_predictions" / "nnunet_ext_demo_predictions.json").read_text())
    assert stamp["trainer"] == trainer and stamp["folds"] == [0] and stamp["dataset"]["spacing_mm"] == 8.0
    steps = json.loads((results / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0" / "train_step_seconds.json")
                       .read_text())
    assert steps["num_timed_iterations"] == 1 and steps["median_s_per_iteration"] > 0


def test_demo_rejects_bad_arguments(tmp_path, monkeypatch):
    from nnunet_ext.cli.main import main

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    for args, msg in ((["--trainer", "NoSuchTrainer"], "unknown trainer 'NoSuchTrainer'"),
                      (["--trainer", "UNETRPPTrainer_5epochs"], "give the base trainer name"),
                      (["--folds", "0", "7"], "--folds takes distinct folds"),
                      (["--trainer", "nnUNetTrainer", "nnUNetTrainer"], "names a trainer twice")):
        with pytest.raises(SystemExit) as e:
            main(["demo", *args])
        assert str(e.value).startswith("nnunet-ext demo: ") and msg in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / "nnunet_ext_demo").exists()


def test_demo_five_folds_selects_a_configuration_and_postprocesses(demo_8mm):
    """The full workflow: five folds, nnU-Net's model selection, ensemble prediction, its postprocessing
    (fold 0 is the first demo's, reused)."""
    tmp_path, _ = demo_8mm
    # nnU-Net's augmentation in the training process and one export worker: no worker processes to
    # start per fold (the first test runs the demo with a new user's settings)
    env = {**_user_env(tmp_path), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"}
    p = subprocess.run([str(BIN / "nnunet-ext"), "demo", "--trainer", "SmallUNetTrainer", "--epochs", "1",
                        "--iters", "2", "--spacing", "8", "--folds", "0", "1", "2", "3", "4"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    out = p.stdout
    assert out.count("==> training fold") == 4 and "==> fold 0: reusing the trained model" in out
    assert "==> find best configuration" in out
    assert "==> applying the selected postprocessing" in out
    results = next((tmp_path / "nnunet_ext_demo" / "results").glob("Dataset987_*"))
    trainer = "SmallUNetTrainer_1epoch_2iters"
    info = json.loads((results / "inference_information.json").read_text())
    assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["trainer"] == trainer
    assert f"best: {trainer}__nnUNetPlans__3d_fullres; cross-validation Dice" in out
    line = next(x for x in out.splitlines() if "cross-validation Dice (nnU-Net's validation" in x)
    assert all(f"fold {f} " in line for f in range(5))
    # the evaluated predictions are the postprocessed ensemble of the five folds
    run = results / "nnunet_ext_demo" / trainer / "folds_0_1_2_3_4"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["prediction_folder"] == str(run / "test_predictions_postprocessed") and len(metrics["cases"]) == 2
    assert len(list((run / "test_predictions_postprocessed").glob("*.nii.gz"))) == 2
