"""An evaluation result as files (JSON and CSV, both or neither) and as a markdown table."""

import csv
import json
import math

import pytest

from nnunet_ext.evaluation.folder import SCHEMA, evaluate_folders
from nnunet_ext.evaluation.report import CSV_COLUMNS, format_summary, write_outputs


@pytest.fixture
def result(folders):
    gt, pred = folders
    return evaluate_folders(gt, pred, num_processes=1, progress=False)


def test_json_and_csv_schema(result, tmp_path):
    write_outputs(result, tmp_path / "out" / "e.json", tmp_path / "out" / "e.csv")
    j = json.loads((tmp_path / "out" / "e.json").read_text())
    assert j["schema"] == SCHEMA
    assert set(j) == {"schema", "reference_folder", "prediction_folder", "file_ending", "tolerance_mm",
                      "hd_percentile", "labels", "ignore_label", "ignored_predictions", "unscored_prediction_labels",
                      "cases", "mean", "overall"}
    assert j["unscored_prediction_labels"] == {}
    assert set(j["cases"][0]) == {"case", "reference_file", "prediction_file", "spacing", "metrics"}
    assert set(j["cases"][0]["metrics"]["1"]) == {"dice", "hd95", "nsd", "n_ref", "n_pred"}
    assert set(j["mean"]["2"]) == {"dice", "hd95", "hd95_finite", "nsd", "n_cases", "n_both_empty", "n_one_empty"}
    assert set(j["overall"]) == {"dice", "hd95", "hd95_finite", "nsd"}
    assert j["cases"][1]["metrics"]["2"]["hd95"] == math.inf   # written as Infinity, read back as inf
    rows = list(csv.DictReader((tmp_path / "out" / "e.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["case"], r["label"]) for r in rows] == [("case_a", "1"), ("case_a", "2"), ("case_b", "1"),
                                                        ("case_b", "2"), ("mean", "1"), ("mean", "2"),
                                                        ("mean", "all")]
    assert rows[3]["hd95"] == "inf" and float(rows[2]["hd95"]) == pytest.approx(3.0)
    assert rows[-1]["name"] == "all" and float(rows[-1]["dice"]) == pytest.approx(result["overall"]["dice"])
    assert not list((tmp_path / "out").glob(".*tmp"))           # no temp files left behind


def test_write_outputs_writes_both_or_neither(result, tmp_path):
    out = tmp_path / "out"
    (out / "e.csv").mkdir(parents=True)             # the CSV cannot be written
    with pytest.raises(IsADirectoryError):
        write_outputs(result, out / "e.json", out / "e.csv")
    assert sorted(p.name for p in out.iterdir()) == ["e.csv"]   # no JSON, no temp files
    write_outputs(result, out / "e.json", out / "r.csv")
    assert json.loads((out / "e.json").read_text())["schema"] == SCHEMA and (out / "r.csv").is_file()


def test_summary_table(result):
    lines = format_summary(result).splitlines()
    assert lines[0].startswith("| class | Dice | HD95 (mm) | HD95 finite (mm) | NSD@1mm |")
    assert lines[3].startswith("| 2 | 0.5000 | inf | 0.00 |")       # one case missed label 2
    assert lines[-1].startswith("| **mean** |") and lines[-1].endswith("| 2 |")
