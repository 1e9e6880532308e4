"""``nnunet-ext compare`` on small nnU-Net result trees written directly (no training)."""

import csv
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import stats

from nnunet_ext.cli.main import main
from nnunet_ext.evaluation.crossval import CACHE_NAME
from tests.evaluation.crossval_tree import DATASET, SHAPE, SPACING, Tree

ARGS = ["compare", "-d", "901", "-c", "3d_fullres", "--num-processes", "1", "--quiet"]


def _run(tree, monkeypatch, *extra):
    for k, v in tree.env().items():
        monkeypatch.setenv(k, v)
    return main([*ARGS, *extra])


def _rows(path):
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Ten cases, five folds; baseline Noise, then a perfect and a slightly eroded trainer."""
    tree = Tree(tmp_path_factory.mktemp("compare"))
    for i, (name, recipe) in enumerate([("Noise", "noise"), ("Exact", "exact"), ("Eroded", "eroded")]):
        tree.add_trainer(name, recipe, seed=i)
    with pytest.MonkeyPatch.context() as mp:
        import io
        from contextlib import redirect_stdout
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert _run(tree, mp, "-tr", "Noise", "Exact", "Eroded") == 0
    return tree, tree.results / DATASET / "compare_3d_fullres", buf.getvalue()


def test_compare_writes_its_files_prints_the_table_and_caches_the_scores(compared):
    tree, out, text = compared
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.md", "summary.csv", "per_case.csv", "boxplots.png",
                                                            "ranking.png", "compare.json"])
    for png in ("boxplots.png", "ranking.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 outer | Dice | `Noise` (baseline) |" in text and "| 2 inner | HD95 mm |" in text
    assert "Holm-corrected over the 12 comparisons" in text
    assert (out / "summary.md").read_text().strip() in text
    assert "scored 30 of 30" in text
    for t in ("Noise", "Exact", "Eroded"):
        for f in range(5):
            cache = json.loads((tree.fold_dir(t, f) / "validation" / CACHE_NAME).read_text())
            assert sorted(cache["cases"]) == tree.splits[f]["val"] and cache["classes"] == ["1", "2"]


def test_per_case_dice_equals_an_independent_computation_from_the_two_files(compared):
    tree, out, _ = compared
    rows = _rows(out / "per_case.csv")
    assert list(rows[0]) == ["trainer", "fold", "case", "label", "dice", "hd95", "nsd"]
    assert len(rows) == 3 * 10 * 2
    checked = 0
    for r in rows:
        if r["trainer"] != "Eroded":
            continue
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tree.gt(r["case"]))))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tree.prediction("Eroded", r["case"]))))
        a, b = ref == int(r["label"]), pred == int(r["label"])
        assert float(r["dice"]) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-12)
        assert int(r["fold"]) == next(f for f, s in enumerate(tree.splits) if r["case"] in s["val"])
        checked += 1
    assert checked == 20


def test_p_value_equals_scipys_wilcoxon_on_the_csv_columns(compared):
    tree, out, _ = compared
    per_case = _rows(out / "per_case.csv")
    summary = _rows(out / "summary.csv")

    def column(trainer, label, metric):
        return [float(r[metric]) for r in sorted(per_case, key=lambda r: r["case"])
                if r["trainer"] == trainer and r["label"] == label]

    tested = [r for r in summary if r["trainer"] != "Noise"]
    assert len(tested) == 12
    for r in tested:
        x, y = column(r["trainer"], r["label"], r["metric"]), column("Noise", r["label"], r["metric"])
        p = stats.wilcoxon(x, y).pvalue
        assert float(r["p_wilcoxon"]) == pytest.approx(p, rel=1e-12)
        assert float(r["p_holm"]) >= float(r["p_wilcoxon"])
        # every trainer beats noise on every case: the same p everywhere, so Holm multiplies by 12
        assert float(r["p_holm"]) == pytest.approx(min(1.0, 12 * p))


def test_a_perfect_trainer_is_significantly_better_than_noise_and_ranks_first(compared):
    tree, out, _ = compared
    for r in _rows(out / "summary.csv"):
        if r["trainer"] == "Exact":
            assert r["verdict"] == "significantly better", r
            assert float(r["diff_mean"]) * (1 if r["metric"] != "hd95" else -1) > 0
            assert float(r["ci_low"]) <= float(r["diff_mean"]) <= float(r["ci_high"])
    rk = json.loads((out / "compare.json").read_text())["ranking"]
    assert rk["place"] == [3, 1, 2] and rk["holds_place"][1] == 1.0       # Noise, Exact, Eroded
    assert rk["friedman"]["p"] < 0.05 and rk["n_cases"] == 10


def test_a_second_run_with_one_more_trainer_scores_only_the_new_one(tmp_path, monkeypatch, capsys):
    tree = Tree(tmp_path, num_cases=6, num_folds=3)
    tree.add_trainer("A", "exact")
    tree.add_trainer("B", "eroded")
    assert _run(tree, monkeypatch, "-tr", "A", "B", "-f", "0", "1", "2") == 0
    assert "scored 12 of 12" in capsys.readouterr().out
    tree.add_trainer("C", "noise")
    assert _run(tree, monkeypatch, "-tr", "A", "B", "C", "-f", "0", "1", "2") == 0
    assert "scored 6 of 18" in capsys.readouterr().out
    # a prediction written again is scored again, the others come from the cache
    pred = tree.prediction("B", "case_004")
    from tests.synthetic import write_nifti
    write_nifti(np.zeros(SHAPE, np.uint8), pred, SPACING)
    assert _run(tree, monkeypatch, "-tr", "A", "B", "C", "-f", "0", "1", "2") == 0
    assert "scored 1 of 18" in capsys.readouterr().out
    rows = _rows(tree.results / DATASET / "compare_3d_fullres" / "per_case.csv")
    assert [float(r["dice"]) for r in rows if r["trainer"] == "B" and r["case"] == "case_004"] == [0.0, 0.0]


def test_fewer_than_six_paired_cases_give_the_table_without_p_values(tmp_path, monkeypatch, capsys):
    tree = Tree(tmp_path)
    tree.add_trainer("A", "exact", folds=[0, 1])
    tree.add_trainer("B", "eroded", folds=[0, 1])
    assert _run(tree, monkeypatch, "-tr", "A", "B", "-f", "0", "1", "--out", str(tmp_path / "cmp")) == 0
    text = capsys.readouterr().out
    assert ("no p-values: 4 paired cases, fewer than 6 (a two-sided Wilcoxon signed-rank test on 5 pairs cannot "
            "reach p < 0.05); pool more folds (-f 0 1 2 3 4)") in text
    assert "need at least 3 trainers" in text
    rows = _rows(tmp_path / "cmp" / "summary.csv")
    assert {r["verdict"] for r in rows if r["trainer"] == "B"} == {"n/a"}
    assert all(r["p_wilcoxon"] == "nan" for r in rows)


def _no_validation(tree):
    import shutil
    shutil.rmtree(tree.fold_dir("B", 3) / "validation")


def _unfinished(tree):
    _no_validation(tree)
    (tree.fold_dir("B", 3) / "checkpoint_final.pth").unlink()


def _other_split(tree):
    (tree.preprocessed / DATASET / "splits_final.json").unlink()
    v = tree.fold_dir("B", 0) / "validation"
    (v / "case_005.nii.gz").rename(v / "case_003.nii.gz")


def _lacking_case(tree):
    (tree.fold_dir("B", 0) / "validation" / "case_005.nii.gz").unlink()


def _other_spacing(tree):
    from tests.synthetic import write_nifti
    write_nifti(tree.refs["case_002"], tree.prediction("B", "case_002"), (3.0, 1.0, 1.0))


@pytest.mark.parametrize("damage, extra, message", [
    (_no_validation, [], "trainer B fold 3 has no validation predictions ('{results}/Dataset901_Tiny/"
                         "B__nnUNetPlans__3d_fullres/fold_3/validation' missing); run its validation: nnUNetv2_train "
                         "Dataset901_Tiny 3d_fullres 3 -tr B --val"),
    (_unfinished, [], "trainer B fold 3 has no validation predictions ('{results}/Dataset901_Tiny/"
                      "B__nnUNetPlans__3d_fullres/fold_3/validation' missing); its training is unfinished (no "
                      "checkpoint_final.pth); finish it: nnUNetv2_train Dataset901_Tiny 3d_fullres 3 -tr B "
                      "(add --c to continue)"),
    (_other_split, ["-f", "0"], "trainers A and B validated different cases in folds 0 (only A: 'case_005'; only B: "
                                "'case_003'); compare trainers trained on the same splits (splits_final.json)"),
    (_lacking_case, [], "trainer B fold 0: validation lacks 1 of the fold's 2 cases ('case_005'); let a running "
                        "validation finish, or run it again: nnUNetv2_train Dataset901_Tiny 3d_fullres 0 -tr B --val"),
    (_other_spacing, [], "trainer B fold 2: case 'case_002': prediction spacing [1.0, 1.0, 3.0] (x, y, z) differs "
                         "from the reference's [1.0, 1.0, 2.0]; predictions must be on the reference's grid"),
    (lambda tree: None, ["-p", "OtherPlans"],
     "trainer A: no results '{results}/Dataset901_Tiny/A__OtherPlans__3d_fullres'; train it: nnUNetv2_train "
     "Dataset901_Tiny 3d_fullres 0 -tr A -p OtherPlans (for each fold), or check -tr / -p / -c"),
    (lambda tree: None, ["--baseline", "C"], "baseline C is not among the trainers (A B); add it to -tr or choose "
                                             "one of them"),
    (lambda tree: None, ["-f", "0", "0"], "-f takes distinct fold numbers >= 0, got 0 0"),
    (lambda tree: (tree.root / "afile").write_text(""), ["--out", "{results}/../afile/cmp"],
     "--out '{results}/../afile/cmp' cannot be a folder: '{results}/../afile' is a file; choose another --out"),
], ids=["no-validation", "unfinished-training", "different-cases", "incomplete-validation", "grid-mismatch",
        "unknown-plans", "unknown-baseline", "repeated-fold", "out-under-a-file"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, damage, extra, message):
    tree = Tree(tmp_path)
    tree.add_trainer("A", "exact")
    tree.add_trainer("B", "eroded")
    damage(tree)
    before = tree.snapshot()
    with pytest.raises(SystemExit) as e:
        _run(tree, monkeypatch, "-tr", "A", "B", *[a.format(results=tree.results) for a in extra])
    text = str(e.value)
    assert "\n" not in text and text.startswith("nnunet-ext compare: ")
    assert message.format(results=tree.results) in text
    assert tree.snapshot() == before


@pytest.mark.parametrize("argv, message", [
    (["-d", "901", "-tr", "A"], "compare needs at least two trainers, got 1"),
    (["-d", "901", "-tr", "A", "A"], "trainer A is given twice"),
    (["-d", "902", "-tr", "A", "B"], "dataset 902: no folder named Dataset902_* in"),
    (["-d", "liver", "-tr", "A", "B"], "dataset 'liver' is neither an id"),
])
def test_bad_arguments(tmp_path, monkeypatch, argv, message):
    for k in ("results", "preprocessed"):
        (tmp_path / k / DATASET).mkdir(parents=True)
        monkeypatch.setenv(f"nnUNet_{k}", str(tmp_path / k))
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["compare", "-c", "3d_fullres", *argv])
