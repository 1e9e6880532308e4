"""Paired statistics of per-case metrics: one trainer against a baseline, and a ranking of all.

Library choice: scipy only. ``scipy.stats.wilcoxon`` (paired signed-rank test),
``scipy.stats.bootstrap`` (confidence interval of the paired mean difference),
``scipy.stats.friedmanchisquare`` and ``scipy.stats.studentized_range`` (Nemenyi's critical
difference, Demšar, JMLR 2006) cover everything; ``autorank`` and ``scikit-posthocs`` would
add statsmodels (and baycomp / jinja2) for the same tests. Holm's step-down correction is not in
scipy and is written out in :func:`holm`.

Conventions (per class and metric, cases paired by name):

- a pair where either value is NaN (class absent from reference and prediction) is left out;
- HD95 is +inf where exactly one mask is empty: the signed-rank test and the ranking treat it as
  the worst value (a tie when both are +inf), while mean, std and the bootstrap interval are over
  the pairs with finite values, and ``n_inf`` says how many were left out;
- with fewer than :data:`MIN_PAIRED_CASES` pairs there is no p-value: a two-sided signed-rank test
  on 5 pairs cannot go below p = 2/2^5 = 0.0625, so it could never reject at α 0.05.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

#: pairs below which no p-value is given (see the module docstring)
MIN_PAIRED_CASES = 6
#: which direction is better, per metric
HIGHER_IS_BETTER = {"dice": True, "hd95": False, "nsd": True}


def paired_differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """``a - b`` per pair, NaN pairs left out, equal values (also +inf and +inf) 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    with np.errstate(invalid="ignore"):
        return np.where(a == b, 0.0, a - b)


def bootstrap_mean_ci(d: np.ndarray, seed: int = 0, n_resamples: int = 9999,
                      confidence: float = 0.95) -> tuple[float, float]:
    """BCa bootstrap interval of the mean of ``d`` (``scipy.stats.bootstrap``, seeded); the
    percentile interval where BCa is undefined; the value itself if all are equal; NaN below 2."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                                 method=method, rng=np.random.default_rng(seed)).confidence_interval
        if math.isfinite(ci.low) and math.isfinite(ci.high):
            break
    return float(ci.low), float(ci.high)


def compare_paired(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True,
                   seed: int = 0, n_resamples: int = 9999) -> dict:
    """Trainer values ``a`` against baseline values ``b`` of the same cases.

    Returns:
        ``{"n", "n_inf", "diff_mean", "ci_low", "ci_high", "p", "better"}``: pairs used, pairs with
        an infinite difference, the mean of the finite differences ``a - b`` with its 95 %
        bootstrap interval, the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``;
        NaN with fewer than :data:`MIN_PAIRED_CASES` pairs, 1.0 when all differences are 0) and
        whether ``a``'s signed ranks lean to the better side (None: no lean).
    """
    from scipy import stats

    d = paired_differences(a, b)
    finite = d[np.isfinite(d)]
    low, high = bootstrap_mean_ci(finite, seed, n_resamples)
    nz = d[d != 0]
    lean = float(np.sum(np.sign(nz) * stats.rankdata(np.abs(nz)))) if nz.size else 0.0
    if d.size < MIN_PAIRED_CASES:
        p = math.nan
    elif not nz.size:
        p = 1.0
    else:
        p = float(stats.wilcoxon(d).pvalue)
    return {"n": int(d.size), "n_inf": int(d.size - finite.size),
            "diff_mean": float(finite.mean()) if finite.size else math.nan, "ci_low": low, "ci_high": high,
            "p": p, "better": None if lean == 0 else (lean > 0) == higher_is_better}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted as a test)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p[j]))
        out[j] = running
    return out


def verdict(p_adjusted: float, better: bool | None, alpha: float = 0.05) -> str:
    """``significantly better`` / ``significantly worse`` / ``no difference`` (at ``alpha``);
    ``n/a`` without a p-value."""
    if math.isnan(p_adjusted):
        return "n/a"
    if p_adjusted < alpha and better is not None:
        return "significantly better" if better else "significantly worse"
    return "no difference"


# ---------------------------------------------------------------------------------- ranking
def case_ranks(values: np.ndarray, higher_is_better: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Challenge-style ranks: per case, each item (class × metric) ranks the trainers (1 = best,
    ties averaged); a trainer's case score is its mean rank over the case's items (an item where
    any trainer has NaN is left out); the case scores are ranked again.

    Args:
        values: (trainers, cases, items).
        higher_is_better: per item.

    Returns:
        ``(ranks, kept)``: ranks (kept cases, trainers), 1 = best; ``kept`` the indices of the
        cases with at least one item.
    """
    from scipy import stats

    v = np.where(np.asarray(higher_is_better)[None, None, :], -values, values)    # lower is better now
    valid = ~np.isnan(v).any(axis=0)                                                # (cases, items)
    item_ranks = stats.rankdata(np.where(np.isnan(v), 0.0, v), axis=0)              # (trainers, cases, items)
    item_ranks = np.where(valid[None], item_ranks, np.nan)
    kept = np.flatnonzero(valid.any(axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = np.nanmean(item_ranks[:, kept, :], axis=2)                         # (trainers, cases)
    return stats.rankdata(scores.T, axis=1), kept


def rank_stability(ranks: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Mean rank per trainer and how stable its place is over bootstrap resamples of the cases.

    Args:
        ranks: (cases, trainers) from :func:`case_ranks`.

    Returns:
        ``{"mean_rank": [k], "place": [k] (1 = best, ties share the better place),
        "place_frequency": [k][k] (fraction of resamples with trainer i in place j+1),
        "holds_place": [k] (fraction of resamples with the same place), "n_resamples"}``.
    """
    from scipy import stats

    n, k = ranks.shape
    mean_rank = ranks.mean(axis=0)
    place = stats.rankdata(mean_rank, method="min").astype(int)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    boot_places = stats.rankdata(ranks[idx].mean(axis=1), axis=1, method="min").astype(int)   # (B, k)
    freq = np.stack([(boot_places == j + 1).mean(axis=0) for j in range(k)], axis=1)
    return {"mean_rank": mean_rank.tolist(), "place": place.tolist(), "place_frequency": freq.tolist(),
            "holds_place": (boot_places == place[None]).mean(axis=0).tolist(), "n_resamples": int(n_resamples)}


def friedman_nemenyi(ranks: np.ndarray, alpha: float = 0.05) -> dict | None:
    """Friedman test over the cases and Nemenyi's critical difference of the mean ranks (None with
    fewer than 3 trainers or 2 cases).

    Args:
        ranks: (cases, trainers) from :func:`case_ranks`.

    Returns:
        ``{"statistic", "p", "n_cases", "cd", "alpha", "groups"}``; ``groups``: maximal sets of
        trainer indices whose mean ranks lie within ``cd`` of each other (not significantly
        different), each sorted by mean rank.
    """
    from scipy import stats

    n, k = ranks.shape
    if k < 3 or n < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.friedmanchisquare(*ranks.T)
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    cd = float(q * math.sqrt(k * (k + 1) / (6.0 * n)))
    mean_rank = ranks.mean(axis=0)
    order = np.argsort(mean_rank, kind="stable")
    groups, last_end = [], -1
    for i in range(k):
        j = i
        while j + 1 < k and mean_rank[order[j + 1]] - mean_rank[order[i]] <= cd:
            j += 1
        if j > i and j > last_end:
            groups.append([int(t) for t in order[i:j + 1]])
            last_end = j
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "n_cases": int(n), "cd": cd,
            "alpha": alpha, "groups": groups}
