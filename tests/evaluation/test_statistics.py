"""Paired statistics and ranking against hand-worked values and published constants."""

import math

import numpy as np
import pytest
from scipy import stats

from nnunet_ext.evaluation import statistics as st


def test_paired_differences_drop_nan_pairs_and_tie_equal_infinities():
    d = st.paired_differences([0.9, math.nan, math.inf, math.inf, 3.0], [0.5, 0.2, math.inf, 2.0, math.nan])
    assert d.tolist() == pytest.approx([0.4, 0.0, math.inf])


def test_holm_matches_hand_worked_step_down():
    # sorted p 0.01, 0.02, 0.03, 0.04 -> 4*0.01, max(0.04, 3*0.02), max(0.06, 2*0.03), max(0.06, 0.04)
    adjusted = st.holm([0.03, 0.01, math.nan, 0.04, 0.02])
    assert adjusted[[1, 4, 0, 3]] == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert math.isnan(adjusted[2])
    assert st.holm([0.5, 0.6]).tolist() == [1.0, 1.0]


def test_compare_paired_is_scipys_wilcoxon_and_a_seeded_bootstrap():
    rng = np.random.default_rng(3)
    b = rng.uniform(0.6, 0.8, 12)
    a = b + rng.normal(0.03, 0.02, 12)
    res = st.compare_paired(a, b, higher_is_better=True, seed=7, n_resamples=2000)
    assert res["p"] == stats.wilcoxon(a, b).pvalue
    assert res["diff_mean"] == pytest.approx(np.mean(a - b))
    assert res["ci_low"] < res["diff_mean"] < res["ci_high"]
    assert res["better"] is True and res["n"] == 12 and res["n_inf"] == 0
    assert st.compare_paired(a, b, seed=7, n_resamples=2000)["ci_low"] == res["ci_low"]   # reproducible
    # lower is better (HD95): the same differences lean the other way
    assert st.compare_paired(a, b, higher_is_better=False, n_resamples=200)["better"] is False


def test_compare_paired_with_infinite_hd95_and_too_few_pairs():
    a = np.array([1.0, 2.0, math.inf, 1.5, 1.0, 2.5, 3.0])
    b = np.array([2.0, 3.0, 2.0, 2.5, 2.0, 3.5, math.inf])
    res = st.compare_paired(a, b, higher_is_better=False, n_resamples=500)
    assert res["n"] == 7 and res["n_inf"] == 2
    assert res["diff_mean"] == pytest.approx(-1.0)                 # over the five finite pairs
    assert res["ci_low"] == res["ci_high"] == pytest.approx(-1.0)   # all five equal
    few = st.compare_paired(a[:5], b[:5], n_resamples=200)
    assert math.isnan(few["p"]) and few["n"] == 5
    assert st.verdict(few["p"], few["better"]) == "n/a"


def test_case_ranks_by_hand():
    # 2 trainers x 2 cases x 2 items (Dice higher is better, HD95 lower is better)
    values = np.array([[[0.9, 2.0], [0.5, 1.0]],
                       [[0.8, 3.0], [0.6, math.nan]]])
    ranks, kept = st.case_ranks(values, [True, False])
    # case 0: trainer 0 wins both items; case 1: only Dice counts (NaN HD95) and trainer 1 wins it
    assert kept.tolist() == [0, 1]
    assert ranks.tolist() == [[1.0, 2.0], [2.0, 1.0]]


def test_rank_stability_of_a_clear_order_and_a_coin_toss():
    clear = np.tile([1.0, 2.0, 3.0], (10, 1))
    s = st.rank_stability(clear, n_resamples=200)
    assert s["mean_rank"] == [1.0, 2.0, 3.0] and s["place"] == [1, 2, 3] and s["holds_place"] == [1.0, 1.0, 1.0]
    toss = np.array([[1.0, 2.0], [2.0, 1.0]] * 10)
    s = st.rank_stability(toss, n_resamples=400, seed=1)
    assert s["place"] == [1, 1]                                   # tied mean rank: both first
    assert 0.3 < s["place_frequency"][0][0] < 0.9


@pytest.mark.parametrize("k, q_demsar", [(3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850)])
def test_nemenyi_critical_difference_matches_demsars_table(k, q_demsar):
    """Demšar (JMLR 2006), table 5(a): q_0.05 = 2.343, 2.569, 2.728, 2.850 for 3..6 classifiers."""
    n = 12
    rng = np.random.default_rng(0)
    ranks = np.array([rng.permutation(k) + 1.0 for _ in range(n)])
    res = st.friedman_nemenyi(ranks)
    assert res["cd"] == pytest.approx(q_demsar * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)
    assert res["p"] == pytest.approx(stats.friedmanchisquare(*ranks.T).pvalue)


def test_nemenyi_groups_join_trainers_within_the_critical_difference():
    ranks = np.array([[1.0, 2.0, 3.0]] * 10)                      # CD(k=3, n=10) = 1.05
    res = st.friedman_nemenyi(ranks)
    assert res["groups"] == [[0, 1], [1, 2]]
    assert st.friedman_nemenyi(ranks[:, :2]) is None              # two trainers: no Friedman test
