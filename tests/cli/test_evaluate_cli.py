"""``nnunet-ext evaluate`` and ``nnunet-ext benchmark`` through the console entry point."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli.main import main


def write(arr, path, spacing=(0.8, 0.8, 2.0)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    gt, pred = tmp_path / "labelsTs", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    z, y, x = np.ogrid[:16, :32, :32]
    for i, r in enumerate((6, 8, 10)):
        ref = ((((z - 8) * 2.0) ** 2 + ((y - 16) * 0.8) ** 2 + ((x - 16) * 0.8) ** 2) <= r ** 2).astype(np.uint8)
        ref[1:3, 1:4, 1:4] = 2
        p = ref.copy()
        p[ref == 2] = 0 if i == 2 else 2           # the last case misses label 2
        write(ref, gt / f"case_{i:03d}.nii.gz")
        write(p, pred / f"case_{i:03d}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "ball": 1, "cube": 2}}))
    return tmp_path, gt, pred


def test_evaluate_end_to_end(folders, capsys):
    root, gt, pred = folders
    out, csv_path = root / "res" / "eval.json", root / "res" / "eval.csv"
    rc = main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--dataset-json", str(root / "dataset.json"),
               "--tolerance", "2", "--out", str(out), "--csv", str(csv_path), "--num-processes", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| 1 ball | 1.0000 | 0.00 |" in text and "| 2 cube |" in text and str(out) in text
    r = json.loads(out.read_text())
    assert r["tolerance_mm"] == 2.0 and r["labels"] == {"1": "ball", "2": "cube"}
    assert [c["case"] for c in r["cases"]] == ["case_000", "case_001", "case_002"]
    assert r["cases"][0]["spacing"] == pytest.approx([2.0, 0.8, 0.8])
    assert r["mean"]["1"]["dice"] == 1.0 and r["mean"]["1"]["nsd"] == 1.0
    assert r["mean"]["2"]["dice"] == pytest.approx(2 / 3) and r["mean"]["2"]["hd95"] == math.inf
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 * 2 + 2 + 1 and rows[-1]["case"] == "mean" and rows[-1]["label"] == "all"


def test_evaluate_defaults_write_into_the_prediction_folder(folders):
    root, gt, pred = folders
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--labels", "1", "--num-processes", "1",
                 "--quiet"]) == 0
    r = json.loads((pred / "evaluation.json").read_text())
    assert list(r["labels"]) == ["1"]
    assert (pred / "evaluation.csv").is_file()


@pytest.mark.parametrize("damage, match", [
    (lambda pred: (pred / "case_001.nii.gz").unlink(), "case_001"),
    (lambda pred: write(np.zeros((16, 32, 32)), pred / "case_002.nii.gz", spacing=(0.8, 0.8, 3.0)),
     "case 'case_002': prediction spacing"),
])
def test_evaluate_bad_input_names_the_case_and_writes_nothing(folders, damage, match):
    root, gt, pred = folders
    damage(pred)
    out = root / "res" / "eval.json"
    with pytest.raises(SystemExit, match=match) as e:
        main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(out), "--num-processes", "1",
              "--quiet"])
    assert str(e.value).startswith("nnunet-ext evaluate: ")
    assert not (root / "res").exists()
    assert not list(pred.glob("evaluation*")) and not list(pred.glob(".*"))


def _fractional(root, gt, pred):
    img = sitk.ReadImage(str(pred / "case_001.nii.gz"))
    soft = sitk.Cast(img, sitk.sitkFloat32) * 0.5          # labels 1, 2 -> 0.5, 1.0
    sitk.WriteImage(soft, str(pred / "case_001.nii.gz"))


def _extra_label(root, gt, pred):
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "case_000.nii.gz")))
    arr[0, :2, :2] = 7
    write(arr, pred / "case_000.nii.gz")


@pytest.mark.parametrize("setup, extra, match", [
    (lambda root, gt, pred: (root / "res").mkdir(), ["--out", "{root}/res"],
     r"--out '.*res' is a folder; give a file name, e.g. --out .*res/evaluation\.json$"),
    (lambda root, gt, pred: (root / "res.csv").mkdir(), ["--out", "{root}/res.json"],
     r"--csv '.*res\.csv' is a folder; give a file name"),
    (lambda root, gt, pred: (root / "afile").write_text(""), ["--out", "{root}/afile/sub/e.json"],
     r"--out '.*afile/sub/e\.json' cannot be written: '.*afile' is a file, not a folder"),
    (_fractional, ["--out", "{root}/e.json", "--num-processes", "2"],
     r"case 'case_001': prediction '.*case_001\.nii\.gz' holds non-integer values \(e\.g\. 0\.5\); a "
     r"segmentation must hold integer labels"),
    (_extra_label, ["--out", "{root}/e.json", "--dataset-json", "{root}/dataset.json", "--num-processes", "1"],
     r"case 'case_000': prediction '.*case_000\.nii\.gz' holds label\(s\) 7 that dataset\.json '.*' does not "
     r"declare \(declared: 0 1 2\)"),
    (_extra_label, ["--out", "{root}/e.json", "--num-processes", "1"],
     r"case 'case_000': prediction .* holds label\(s\) 7 that no reference has .*--labels 1 2 7"),
    (lambda root, gt, pred: None, ["--out", "{root}/e.json", "--num-processes", "0"], "--num-processes must be >= 1"),
    (lambda root, gt, pred: None, ["--out", "{root}/e.json", "--tolerance", "-1"], "tolerance must be a finite"),
    (lambda root, gt, pred: None, ["--out", "{root}/e.json", "--labels", "0"], "--labels takes foreground labels"),
], ids=["out-is-folder", "csv-is-folder", "out-under-file", "fractional-prediction", "label-not-in-dataset-json",
        "label-in-no-reference", "num-processes-0", "negative-tolerance", "labels-0"])
def test_evaluate_bad_input_is_one_line_and_writes_nothing(folders, setup, extra, match):
    root, gt, pred = folders
    setup(root, gt, pred)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(SystemExit, match=match) as e:
        main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--quiet", *[a.format(root=root) for a in extra]])
    assert str(e.value).startswith("nnunet-ext evaluate: ") and "\n" not in str(e.value)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_evaluate_warns_about_prediction_labels_left_unscored(folders, capsys):
    root, gt, pred = folders
    _extra_label(root, gt, pred)
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--labels", "1", "--quiet",
                 "--num-processes", "1", "--out", str(root / "e.json")]) == 0
    err = capsys.readouterr().err
    assert "warning: predictions hold labels that are not among --labels and in no reference, so they were not " \
           "scored ('case_000': 7); add them to --labels to score them" in err
    assert json.loads((root / "e.json").read_text())["unscored_prediction_labels"] == {"case_000": [7]}


def test_evaluate_bad_labels(folders):
    root, gt, pred = folders
    with pytest.raises(SystemExit, match="--labels takes integer"):
        main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--labels", "liver"])


def test_benchmark_cli_prints_table_and_json(monkeypatch, capsys):
    import nnunet_ext.bench.networks as bm

    rows = [{"arch": bm.NNUNET, "params": 2_000_000, "params_inference": 2_000_000, "macs": 4_000_000_000,
             "train_s": 2.0, "infer_s": 0.5, "peak_train_mib": 400.0, "peak_infer_mib": 100.0,
             "strides": [[1, 1, 1]], "device": "cpu", "device_name": "cpu", "threads": 2},
            {"arch": "small_unet", "error": "PlanError: not divisible"}]
    seen = {}

    def fake(archs, **kwargs):
        seen.update(kwargs, archs=archs)
        for i, r in enumerate(rows):
            kwargs["on_row"](i, len(rows), r)
        return rows

    monkeypatch.setattr(bm, "benchmark", fake)
    assert main(["benchmark", "--archs", "small_unet", "--patch", "32", "32", "48", "--repeats", "2"]) == 0
    out = capsys.readouterr()
    assert seen["archs"] == ["small_unet"] and seen["patch_size"] == [32, 32, 48] and seen["repeats"] == 2
    assert "| nnU-Net (PlainConvUNet) | 2.00 (1.00×) | 4.00 (1.00×) |" in out.out
    assert "error: PlanError: not divisible" in out.out and "[2/2] small_unet" in out.err
    assert main(["benchmark", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == rows


def test_benchmark_cli_unknown_architecture():
    with pytest.raises(SystemExit, match="unknown architecture.*no_such_net"):
        main(["benchmark", "--archs", "no_such_net"])


def test_a_label_in_no_file_is_one_error_line(folders, capsys):
    root, gt, pred = folders
    out = root / "labels5.json"
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--labels", "1", "5", "--num-processes", "1",
              "--quiet", "--out", str(out)])
    msg = str(e.value)
    assert msg.startswith("nnunet-ext evaluate: label(s) 5 occur in no reference") and "\n" not in msg
    assert msg.endswith("the labels there: 1 2") and not out.exists()


def test_an_unwritable_out_fails_before_scoring_naming_the_path(folders, tmp_path, capsys):
    import os
    root, gt, pred = folders
    if os.geteuid() == 0:                     # root writes into a mode-555 folder; /proc takes no new files
        out = Path("/proc/evaluation.json")
        if not Path("/proc").is_dir():
            pytest.skip("needs /proc to have a folder root cannot write to")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = locked / "evaluation.json"
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--num-processes", "1", "--out", str(out)])
    msg = str(e.value)
    assert msg.startswith(f"nnunet-ext evaluate: --out '{out}' cannot be written: '{out.parent}' is not writable")
    assert "\n" not in msg and "choose a writable --out" in msg
    assert "evaluate" not in capsys.readouterr().err        # no progress bar: nothing was scored
