"""``compare_trainers`` as the demo calls it: explicit folders, and a missed class (HD95 +inf)."""

import json
import math

import pytest

from nnunet_ext.evaluation.compare import compare_trainers, format_summary
from nnunet_ext.evaluation.crossval import CACHE_NAME
from tests.evaluation.crossval_tree import DATASET, Tree


def test_explicit_folders_a_missed_class_and_write_false(tmp_path, monkeypatch):
    for var in ("nnUNet_results", "nnUNet_preprocessed", "nnUNet_raw"):
        monkeypatch.delenv(var, raising=False)
    tree = Tree(tmp_path, num_cases=8, num_folds=4)
    tree.add_trainer("Exact", "exact")
    tree.add_trainer("Missed", "missed_inner")
    before = tree.snapshot()
    kwargs = dict(results_dir=tree.results, preprocessed_dir=tree.preprocessed, progress=False, num_processes=1)
    r = compare_trainers(DATASET, "3d_fullres", ["Exact", "Missed"], folds=[0, 1, 2, 3], write=False, **kwargs)
    assert tree.snapshot() == before                              # nothing written, caches neither
    assert r["out"] == str(tree.results / DATASET / "compare_3d_fullres") and r["n_scored"] == 16
    assert r["baseline"] == "Exact" and r["classes"] == {"1": "outer", "2": "inner"}

    rows = {(s["trainer"], s["label"], s["metric"]): s for s in r["summary"]}
    hd = rows[("Missed", "2", "hd95")]
    assert hd["n_inf"] == 8 and math.isnan(hd["mean"]) and hd["median"] == math.inf
    assert hd["n_inf_pairs"] == 8 and hd["verdict"] == "significantly worse"     # +inf ranks worst
    assert rows[("Missed", "2", "dice")]["verdict"] == "significantly worse"
    assert rows[("Missed", "1", "dice")]["mean"] < 1.0
    assert r["ranking"]["place"] == [1, 2] and r["ranking"]["friedman"] is None
    text = format_summary(r)
    assert "|  |  | `Missed` | inf (8 cases) | inf | 8 inf pairs | 0.0469 | **significantly worse** |" in text
    assert "|  |  | `Missed` | 0.000 ± 0.000 | 0.000 | -1.000 [-1.000, -1.000] | 0.0469 |" in text
    assert "need at least 3 trainers" in text

    out = tmp_path / "cmp"
    r2 = compare_trainers(901, "3d_fullres", ["Missed", "Exact"], folds=[0, 1, 2, 3], baseline="Exact", out=out,
                          **kwargs)
    assert r2["baseline"] == "Exact" and r2["n_scored"] == 16
    saved = json.loads((out / "compare.json").read_text())
    assert "scores" not in saved and saved["trainers"] == ["Missed", "Exact"]
    assert (tree.fold_dir("Missed", 2) / "validation" / CACHE_NAME).is_file()
    # another NSD tolerance does not reuse the cached scores
    r3 = compare_trainers(901, "3d_fullres", ["Missed", "Exact"], folds=[0, 1], out=out, tolerance_mm=2.0, **kwargs)
    assert r3["n_scored"] == 8 and r3["tolerance_mm"] == 2.0
    with pytest.raises(Exception, match="compare needs at least two trainers"):
        compare_trainers(901, "3d_fullres", ["Exact"], **kwargs)


def test_plots_drop_the_suffix_all_trainer_names_share():
    from nnunet_ext.evaluation.compare_plots import short_names

    assert short_names(["nnUNetTrainer_2epochs_10iters", "MISSUTrainer_2epochs_10iters"]) == \
        (["nnUNetTrainer", "MISSUTrainer"], "_2epochs_10iters")
    assert short_names(["nnUNetTrainer", "MISSUTrainer"]) == (["nnUNetTrainer", "MISSUTrainer"], "")
    assert short_names(["A_x", "_x"]) == (["A_x", "_x"], "")            # a name would vanish
