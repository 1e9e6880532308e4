"""What a re-run of the demo workflow reuses, in-process with the stock commands stood in for:
the dataset and what was made from it only at the same settings, test predictions only for the
same trainer, folds and checkpoints (the end-to-end runs are in tests/cli/test_demo_cli.py)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nilearn")
sitk = pytest.importorskip("SimpleITK")

from nnunet_ext.demo import dataset as demo_data  # noqa: E402
from nnunet_ext.demo import workflow  # noqa: E402
from nnunet_ext.demo.workflow import DemoError  # noqa: E402

NAME = f"Dataset{demo_data.DEMO_DATASET_ID:03d}_{demo_data.DEMO_DATASET_NAME}"


@pytest.fixture
def wf(tmp_path, monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    return workflow.Workflow(demo_data.DEMO_DATASET_ID, NAME, "cpu")


def _made_from(wf, raw_dir: Path) -> list[Path]:
    """Stand-ins for what plan_and_preprocess and nnUNetv2_train leave: each with nnU-Net's copy of
    dataset.json; recorded in the manifest as the demo's steps record them. Returns them."""
    model = wf.results("SmallUNetTrainer_1epoch_2iters")
    for folder in (wf.preprocessed, model):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw_dir / "dataset.json", folder / "dataset.json")
    (wf.preprocessed / "nnUNetPlans.json").write_text("{}")
    (model / "fold_0").mkdir(exist_ok=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"model")
    (wf.out / "SmallUNetTrainer_1epoch_2iters" / "folds_0").mkdir(parents=True, exist_ok=True)
    wf.manifest.add_entries(NAME, "preprocessed", ["dataset.json", "nnUNetPlans.json"])
    wf.manifest.add_entries(NAME, "results", [model.name, wf.out.name])
    return [wf.preprocessed, model, wf.out]


def test_other_spacing_rebuilds_the_dataset_and_removes_what_was_made_from_it(wf, capsys):
    raw_dir = workflow.prepare_dataset(wf, 8.0)
    assert "==> building the demo dataset" in capsys.readouterr().out
    made = _made_from(wf, raw_dir)

    assert workflow.prepare_dataset(wf, 8.0) == raw_dir           # same spacing: everything reused
    out = capsys.readouterr().out
    assert "==> reusing the demo dataset" in out and "removing" not in out
    assert all(p.exists() for p in made)

    assert workflow.prepare_dataset(wf, 10.0, assume_yes=True) == raw_dir   # other spacing: rebuilt
    out = capsys.readouterr().out
    assert f"==> the demo dataset in {raw_dir} was built at 8 mm; rebuilding it at 10 mm" in out
    assert (f"==> removing what the demo wrote in {wf.preprocessed} and {wf.results_root}: made from the demo "
            f"dataset at 8 mm, they do not fit the 10 mm data") in out
    assert demo_data.demo_record(raw_dir)["spacing_mm"] == 10.0
    img = sitk.ReadImage(str(raw_dir / "imagesTr" / "case_000_0000.nii.gz"))
    assert np.allclose(img.GetSpacing(), (10.0, 10.0, 10.0))
    assert not wf.preprocessed.exists() and not wf.results_root.exists()
    assert sorted(p.name for p in wf.raw.iterdir()) == [NAME]      # the old dataset is not left aside

    # plans the demo made from other data, next to a 10 mm raw dataset: removed too (no model: no question)
    (wf.preprocessed).mkdir(parents=True)
    record = json.loads((raw_dir / "dataset.json").read_text())
    record["nnunet_ext_demo"]["spacing_mm"] = 8.0
    (wf.preprocessed / "dataset.json").write_text(json.dumps(record))
    wf.manifest.add_entries(NAME, "preprocessed", ["dataset.json"])
    workflow.prepare_dataset(wf, 10.0)
    out = capsys.readouterr().out
    assert "==> reusing the demo dataset" in out and f"==> removing what the demo wrote in {wf.preprocessed}:" in out
    assert not wf.preprocessed.exists()


def test_a_folder_the_demo_did_not_build_is_left_alone(wf):
    foreign = wf.raw / NAME
    foreign.mkdir(parents=True)
    (foreign / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    with pytest.raises(DemoError, match=rf"^'{foreign}' exists but is not a demo dataset .*; "
                                        r"move it away or pass another --dataset-id"):
        workflow.prepare_dataset(wf, 8.0)
    assert sorted(p.name for p in foreign.iterdir()) == ["dataset.json"]

    shutil.rmtree(foreign)
    (wf.results_root.parent / "Dataset987_Mine").mkdir(parents=True)
    with pytest.raises(DemoError, match=r"^dataset id 987 is already used by Dataset987_Mine in nnUNet_results .*"
                                        r"pass another --dataset-id"):
        workflow.prepare_dataset(wf, 8.0)
    assert not (wf.raw / NAME).exists()


class FakeStock:
    """Stands in for nnUNetv2_train / nnUNetv2_predict: records the commands, writes what they would.

    A prediction of the folds ``0`` marks voxels of label 2 as 1 and an ensemble of more folds predicts
    the reference, so the metrics show which predictions they were computed from."""

    def __init__(self, wf, raw_dir):
        self.wf, self.raw_dir, self.commands = wf, raw_dir, []

    def __call__(self, title, cmd, **env):
        self.commands.append(cmd)
        if cmd[0] == "nnUNetv2_train" and "--val" in cmd:       # nnU-Net's validation of a trained fold
            fold = self.wf.results(cmd[5]) / f"fold_{cmd[3]}"
            assert (fold / "checkpoint_final.pth").is_file()
            (fold / "validation").mkdir(exist_ok=True)
            (fold / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.5}}))
        elif cmd[0] == "nnUNetv2_train":
            fold = self.wf.results(cmd[5]) / f"fold_{cmd[3]}"
            (fold / "validation").mkdir(parents=True, exist_ok=True)
            # nnU-Net's training log of one epoch (the trainer name the tests use trains 1 epoch)
            torch.save({"logging": {"train_losses": [0.9], "val_losses": [0.8], "mean_fg_dice": [0.4],
                                    "ema_fg_dice": [0.04], "dice_per_class_or_region": [[0.3, 0.5]]}},
                       fold / "checkpoint_final.pth")
            (fold / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.5}}))
        elif cmd[0] == "nnUNetv2_predict":
            out = Path(cmd[cmd.index("-o") + 1])
            folds = cmd[cmd.index("-f") + 1:cmd.index("-device")]
            out.mkdir(parents=True)
            for ref in (self.raw_dir / "labelsTs").glob("*.nii.gz"):
                img = sitk.ReadImage(str(ref))
                arr = sitk.GetArrayFromImage(img)
                if folds == ["0"]:
                    arr[arr == 2] = 1
                pred = sitk.GetImageFromArray(arr)
                pred.CopyInformation(img)
                sitk.WriteImage(pred, str(out / ref.name))
        else:
            raise AssertionError(f"unexpected command {cmd}")
        return 1.0

    def take(self):
        done, self.commands = self.commands, []
        return [(c[0], c[c.index("-f") + 1:c.index("-device")] if c[0] == "nnUNetv2_predict" else c[3])
                for c in done]


def test_test_predictions_belong_to_their_folds_and_checkpoints(wf, monkeypatch, capsys):
    raw_dir = demo_data.build_demo_dataset(wf.raw, num_train=1, num_test=2, spacing_mm=10.0, progress=False)
    stock = FakeStock(wf, raw_dir)
    monkeypatch.setattr(wf, "run", stock)
    trainer = "SmallUNetTrainer_1epoch_2iters"

    def demo(*folds):
        row = workflow.run_trainer(wf, "SmallUNetTrainer", 1, 2, list(folds), raw_dir)
        return row, capsys.readouterr().out

    row, _ = demo(0, 1)
    assert stock.take() == [("nnUNetv2_train", "0"), ("nnUNetv2_train", "1"), ("nnUNetv2_predict", ["0", "1"])]
    assert row["test_overall"]["dice"] == 1.0
    assert row["curve"]["iterations"] == [2] and row["curve"]["ema_pseudo_dice"] == [0.04]
    run01 = wf.out / trainer / "folds_0_1"
    assert (run01 / "learning_curves.png").stat().st_size > 0
    stamp = json.loads((run01 / "test_predictions" / workflow.PREDICTION_STAMP).read_text())
    assert stamp["trainer"] == trainer and stamp["folds"] == [0, 1] and set(stamp["checkpoints"]) == {"0", "1"}

    # fewer folds: the fold-0 model is reused, but the ensemble's predictions are not
    row, out = demo(0)
    assert stock.take() == [("nnUNetv2_predict", ["0"])] and "reusing the test predictions" not in out
    assert row["test_dice"]["white_matter"] == 0.0              # the fold-0 predictions were scored
    metrics = json.loads((wf.out / trainer / "folds_0" / "test_metrics.json").read_text())
    assert metrics["prediction_folder"] == str(wf.out / trainer / "folds_0" / "test_predictions")
    assert json.loads((run01 / "test_metrics.json").read_text())["overall"]["dice"] == 1.0   # kept apart

    # the same folds again: reused
    row, out = demo(0, 1)
    assert stock.take() == [] and f"==> reusing the test predictions in {run01 / 'test_predictions'}" in out
    assert row["test_overall"]["dice"] == 1.0

    # fold 1 retrained (a new checkpoint): predicted again
    ckpt = wf.results(trainer) / "fold_1" / "checkpoint_final.pth"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    demo(0, 1)
    assert stock.take() == [("nnUNetv2_predict", ["0", "1"])]

    # a prediction missing (a run stopped midway): predicted again, into a cleared folder
    (wf.out / trainer / "folds_0" / "test_predictions" / "case_001.nii.gz").unlink()
    (wf.out / trainer / "folds_0" / "test_predictions" / "stale.nii.gz").write_bytes(b"")
    demo(0)
    assert stock.take() == [("nnUNetv2_predict", ["0"])]
    assert not (wf.out / trainer / "folds_0" / "test_predictions" / "stale.nii.gz").exists()


def test_a_fold_stopped_before_its_validation_is_validated_not_retrained(wf, monkeypatch, capsys):
    """checkpoint_final.pth written, validation/summary.json not (a run stopped in nnU-Net's
    validation): the re-run runs only ``nnUNetv2_train ... --val`` and goes on."""
    raw_dir = demo_data.build_demo_dataset(wf.raw, num_train=1, num_test=2, spacing_mm=10.0, progress=False)
    stock = FakeStock(wf, raw_dir)
    monkeypatch.setattr(wf, "run", stock)
    workflow.run_trainer(wf, "SmallUNetTrainer", 1, 2, [0], raw_dir)
    fold = wf.results("SmallUNetTrainer_1epoch_2iters") / "fold_0"
    ckpt = (fold / "checkpoint_final.pth").read_bytes()
    shutil.rmtree(fold / "validation")
    stock.commands = []
    capsys.readouterr()

    row = workflow.run_trainer(wf, "SmallUNetTrainer", 1, 2, [0], raw_dir)
    assert stock.commands[0] == ["nnUNetv2_train", str(wf.dataset_id), "3d_fullres", "0", "-tr",
                                 "SmallUNetTrainer_1epoch_2iters", "-device", "cpu", "--val"]
    assert [c[0] for c in stock.commands[1:]] == []            # predictions reused: same checkpoint
    assert "its validation did not finish" in capsys.readouterr().out
    assert row["validation_dice"] == {"0": 0.5} and (fold / "checkpoint_final.pth").read_bytes() == ckpt


@pytest.mark.parametrize("root", ["preprocessed", "results"])
def test_a_dataset_folder_the_demo_did_not_write_is_refused_and_kept(wf, root):
    """A user's own Dataset987_NNExtDemo in nnUNet_preprocessed or nnUNet_results only: one line, nothing
    removed, nothing written."""
    folder = wf.folder(root)
    theirs = folder / ("nnUNetPlans.json" if root == "preprocessed" else "MyTrainer__nnUNetPlans__3d_fullres")
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    theirs.mkdir() if root == "results" else theirs.write_text("{}")
    if root == "results":
        (theirs / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    with pytest.raises(DemoError, match=rf"^'{folder}' holds data the demo did not write \(it is not in the demo's "
                                        rf"manifest '.*nnunet_ext_demo_manifest.json'\), so the demo leaves it "
                                        rf"alone; pass another --dataset-id$"):
        workflow.prepare_dataset(wf, 8.0)
    assert theirs.exists() and (folder / "dataset.json").is_file()
    assert not (wf.raw / NAME).exists()


def test_other_spacing_removes_only_what_the_demo_wrote_and_asks_before_models(wf, capsys, monkeypatch):
    raw_dir = workflow.prepare_dataset(wf, 8.0)
    made = _made_from(wf, raw_dir)
    mine = [wf.preprocessed / "my_plans.json", wf.results_root / "my_notes"]
    mine[0].write_text("{}")
    mine[1].mkdir()
    capsys.readouterr()

    # no terminal, no --yes: one line, nothing removed, the raw data not rebuilt
    with pytest.raises(DemoError, match=r"^the demo would remove its trained model\(s\) .*SmallUNetTrainer_1epoch_"
                                        r"2iters__nnUNetPlans__3d_fullres \(made from the demo dataset at 8 mm, .*\); "
                                        r"pass --yes to remove them, or another --dataset-id to keep them$"):
        workflow.prepare_dataset(wf, 10.0)
    assert all(p.exists() for p in made) and demo_data.demo_record(raw_dir)["spacing_mm"] == 8.0

    # a terminal: "n" keeps everything, "y" removes the demo's entries and keeps the user's
    class Tty:
        def isatty(self):
            return True
    monkeypatch.setattr("sys.stdin", Tty())
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    with pytest.raises(DemoError, match="^nothing removed; pass another --dataset-id"):
        workflow.prepare_dataset(wf, 10.0)
    assert all(p.exists() for p in made)
    workflow.prepare_dataset(wf, 10.0)
    out = capsys.readouterr().out
    assert not any(p.exists() for p in made[1:]) and not (wf.preprocessed / "nnUNetPlans.json").exists()
    assert all(p.exists() for p in mine)
    assert f"kept in {wf.preprocessed} (not written by the demo): my_plans.json" in out
    assert f"kept in {wf.results_root} (not written by the demo): my_notes" in out
    assert demo_data.demo_record(raw_dir)["spacing_mm"] == 10.0
    manifest = json.loads((wf.state_folder / "nnunet_ext_demo_manifest.json").read_text())["datasets"][NAME]
    assert manifest["spacing_mm"] == 10.0 and manifest["results"]["entries"] == []


def test_folders_of_an_earlier_demo_without_a_manifest_are_adopted(wf, capsys):
    raw_dir = workflow.prepare_dataset(wf, 8.0)
    made = _made_from(wf, raw_dir)
    (wf.state_folder / "nnunet_ext_demo_manifest.json").unlink()
    wf.manifest = None
    workflow.prepare_dataset(wf, 8.0)                               # reused, nothing refused
    manifest = json.loads((wf.state_folder / "nnunet_ext_demo_manifest.json").read_text())["datasets"][NAME]
    assert set(manifest["results"]["entries"]) == {made[1].name, wf.out.name}
    assert "removing" not in capsys.readouterr().out


def test_a_second_demo_on_the_same_folders_refuses_naming_the_first(wf, tmp_path):
    from nnunet_ext.demo.manifest import demo_lock

    with demo_lock(wf.state_folder):
        with pytest.raises(DemoError, match=rf"^another demo is running on these folders \(pid {os.getpid()}, "
                                            rf"started .*; lock '.*nnunet_ext_demo.lock'\); wait for it to finish"):
            workflow.run_demo(["nnUNetTrainer"], 1, 2, [0], "cpu", 8.0)
        assert not (wf.raw / NAME).exists()                      # refused before writing anything
    with demo_lock(wf.state_folder):                             # released on leaving the block
        pass


def test_five_folds_of_several_trainers_end_with_their_cross_validation_compared(tmp_path, monkeypatch, capsys):
    """The demo's last step is ``nnunet-ext compare`` on what nnU-Net's validation wrote (a tree written
    directly here; the training is tested end to end in tests/cli/test_demo_cli.py)."""
    import csv

    from tests.evaluation.crossval_tree import DATASET, Tree

    tree = Tree(tmp_path / "tree", num_cases=10)
    tree.add_trainer("ExactTrainer", "exact")
    tree.add_trainer("NoiseTrainer", "noise")
    for var, path in tree.env().items():
        monkeypatch.setenv(var, path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    demo = workflow.Workflow(901, DATASET, "cpu")
    out = workflow.compare_cross_validation(demo, ["NoiseTrainer", "ExactTrainer"], "comparison_crossval")
    assert out == demo.out / "comparison_crossval"
    printed = capsys.readouterr().out
    assert "baseline `NoiseTrainer`" in printed and "significantly better" in printed
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 10 * 2  # trainers x cases x classes
    exact = [float(r["dice"]) for r in rows if r["trainer"] == "ExactTrainer"]
    assert exact == [1.0] * 20
    assert {p.name for p in out.iterdir()} >= {"summary.md", "summary.csv", "per_case.csv", "boxplots.png"}
    # a trainer without its validation: one line, through the demo's error
    with pytest.raises(workflow.DemoError, match=r"^comparing the cross-validation: .*MissingTrainer"):
        workflow.compare_cross_validation(demo, ["NoiseTrainer", "MissingTrainer"], "other")
    assert not (demo.out / "other").exists()
