"""Which trainer is best on a dataset: every trainer's cross-validation side by side (``nnunet-ext compare``).

:func:`compare_trainers` scores every validation case of every trainer (:mod:`.crossval`, cached
beside the predictions), pairs the cases, compares each trainer with the baseline per class and
metric and ranks all trainers (:mod:`.statistics`), draws the pictures (:mod:`.compare_plots`)
and writes, all or nothing, into the output folder:

- ``summary.md``: the markdown table :func:`format_summary` prints, and the ranking;
- ``summary.csv``: :data:`SUMMARY_COLUMNS`, one row per trainer × class × metric;
- ``per_case.csv``: :data:`PER_CASE_COLUMNS`, one row per trainer × case × class;
- ``boxplots.png`` and ``ranking.png``;
- ``compare.json``: the result without the per-case scores.

Everything is computed in memory first; a bad input raises :class:`~.cases.EvaluationError` (one
line naming the trainer, fold or case and the fix) before any file, cache included, is written.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_ext.evaluation import statistics as st
from nnunet_ext.evaluation.cases import EvaluationError
from nnunet_ext.io import format_number, json_writer, write_all

SCHEMA = "nnunet-ext/compare/1"
METRICS = ("dice", "hd95", "nsd")
METRIC_NAMES = {"dice": "Dice", "hd95": "HD95 mm", "nsd": "NSD"}
PER_CASE_COLUMNS = ("trainer", "fold", "case", "label", "dice", "hd95", "nsd")
SUMMARY_COLUMNS = ("trainer", "baseline", "label", "name", "metric", "n", "mean", "std", "median", "n_inf",
                   "n_pairs", "n_inf_pairs", "diff_mean", "ci_low", "ci_high", "p_wilcoxon", "p_holm", "verdict")
OUTPUT_FILES = ("summary.md", "summary.csv", "per_case.csv", "boxplots.png", "ranking.png", "compare.json")
ALL_FOLDS = (0, 1, 2, 3, 4)


def default_out(results_dataset_dir: Path, configuration: str, plans: str) -> Path:
    """``<nnUNet_results>/<Dataset>/compare_<configuration>`` (``..._<plans>`` for other plans)."""
    return results_dataset_dir / (f"compare_{configuration}" + ("" if plans == "nnUNetPlans" else f"_{plans}"))


def _describe(values: np.ndarray) -> dict:
    """Mean, std (ddof 1) and median of the finite values, median over all non-NaN ones (so +inf
    counts as the worst), and how many are +inf."""
    v = values[~np.isnan(values)]
    f = v[np.isfinite(v)]
    return {"n": int(v.size), "mean": float(f.mean()) if f.size else math.nan,
            "std": float(f.std(ddof=1)) if f.size > 1 else math.nan,
            "median": float(np.median(v)) if v.size else math.nan, "n_inf": int(v.size - f.size)}


def _check_arguments(trainers: Sequence[str], folds: Sequence[int], baseline: str | None) -> None:
    if len(trainers) < 2:
        raise EvaluationError(f"compare needs at least two trainers, got {len(trainers)}; give them with "
                              f"-tr A B [C ...]")
    dup = sorted({t for t in trainers if list(trainers).count(t) > 1})
    if dup:
        raise EvaluationError(f"trainer {dup[0]} is given twice; name each trainer once")
    if baseline is not None and baseline not in trainers:
        raise EvaluationError(f"baseline {baseline} is not among the trainers ({' '.join(trainers)}); "
                              f"add it to -tr or choose one of them")
    if not folds or len(set(folds)) != len(folds) or any(int(f) < 0 for f in folds):
        raise EvaluationError(f"folds {' '.join(map(str, folds))}: give distinct folds >= 0 (e.g. -f 0 1 2 3 4)")


def compare_trainers(dataset: str | int, configuration: str, trainers: Sequence[str],
                     folds: Sequence[int] = ALL_FOLDS, plans: str = "nnUNetPlans", baseline: str | None = None,
                     out: str | os.PathLike | None = None, *, tolerance_mm: float = 1.0,
                     num_processes: int | None = None, results_dir: str | os.PathLike | None = None,
                     preprocessed_dir: str | os.PathLike | None = None, progress: bool = True,
                     alpha: float = 0.05, seed: int = 0, write: bool = True) -> dict:
    """Compare the cross-validation of ``trainers`` and write the files of the module docstring.

    Args:
        dataset: id (``987``) or name (``Dataset987_NNExtDemo``).
        configuration, plans: nnU-Net's ``-c`` and ``-p``.
        trainers: trainer names as given to ``nnUNetv2_train -tr``; at least two.
        folds: the folds to pool (each case counted once).
        baseline: the trainer the others are compared with (default: the first).
        out: output folder (default :func:`default_out`).
        tolerance_mm: NSD tolerance.
        results_dir, preprocessed_dir: nnU-Net's folders (default: ``nnUNet_results`` /
            ``nnUNet_preprocessed`` from the environment).
        alpha: significance level of the verdicts and the critical difference.
        seed: seed of every bootstrap.
        write: False computes the result and draws and writes nothing (no caches either).

    Returns:
        The result dict (``compare.json``'s content plus ``"scores"``: trainer -> case -> class key
        -> metrics, and ``"files"``: the paths written).

    Raises:
        EvaluationError: bad arguments or input (see :mod:`.crossval`); nothing is written then.
    """
    from nnunet_ext.evaluation import compare_plots, crossval

    trainers = list(trainers)
    folds = [int(f) for f in folds]
    _check_arguments(trainers, folds, baseline)
    baseline = baseline or trainers[0]
    lay = crossval.layout(dataset, configuration, plans, results_dir, preprocessed_dir)
    out = Path(out) if out is not None else default_out(lay.results, configuration, plans)
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise EvaluationError(f"--out '{out}' cannot be a folder: '{existing}' is a file; choose another --out")
    cv = crossval.collect(lay, trainers, folds, tolerance_mm, num_processes, progress)

    result = {"schema": SCHEMA, "dataset": lay.dataset, "configuration": configuration, "plans": plans,
              "folds": folds, "trainers": trainers, "baseline": baseline, "tolerance_mm": cv.tolerance_mm,
              "alpha": alpha, "classes": cv.classes, "metrics": list(METRICS), "cases": cv.cases,
              "fold_of": cv.fold_of, "n_scored": cv.n_scored, "scores": cv.scores}
    result.update(_summary(cv, trainers, baseline, alpha, seed))
    result["ranking"] = _ranking(cv, trainers, alpha, seed)

    result["out"] = str(out)
    result["files"] = [str(out / name) for name in OUTPUT_FILES]
    if write:
        files = {
            "summary.md": format_summary(result).encode() + b"\n",
            "summary.csv": _csv(result["summary"], SUMMARY_COLUMNS),
            "per_case.csv": _csv(per_case_rows(result), PER_CASE_COLUMNS),
            "boxplots.png": compare_plots.boxplots_png(result),
            "ranking.png": compare_plots.ranking_png(result),
            "compare.json": _encode_json({k: v for k, v in result.items() if k not in ("scores", "out", "files")}),
        }
        crossval.write_caches(cv)
        write_all([(out / name, (lambda data: lambda f: f.write(data))(files[name])) for name in OUTPUT_FILES],
                  binary=True)
    return result


def _encode_json(obj) -> bytes:
    buf = io.StringIO()
    json_writer(obj)(buf)
    return buf.getvalue().encode()


def _csv(rows: list[dict], columns: Sequence[str]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def per_case_rows(result: dict) -> list[dict]:
    """Rows of :data:`PER_CASE_COLUMNS`: trainer × case × class (label: nnU-Net's key, e.g. ``1``
    or ``(1, 2)``); NaN / inf written ``nan`` / ``inf``."""
    return [{"trainer": t, "fold": result["fold_of"][t][c], "case": c, "label": k,
             **{m: result["scores"][t][c][k][m] for m in METRICS}}
            for t in result["trainers"] for c in result["cases"] for k in result["classes"]]


def _values(cv, trainer: str, key: str, metric: str) -> np.ndarray:
    return np.array([cv.scores[trainer][c][key][metric] for c in cv.cases], dtype=float)


def _summary(cv, trainers: list[str], baseline: str, alpha: float, seed: int) -> dict:
    """Per trainer × class × metric: description, comparison with the baseline, Holm over all."""
    rows, tests = [], []
    for key, name in cv.classes.items():
        for m in METRICS:
            base = _values(cv, baseline, key, m)
            for t in trainers:
                vals = _values(cv, t, key, m)
                row = {"trainer": t, "baseline": baseline, "label": key, "name": name, "metric": m, **_describe(vals),
                       "diff_mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_wilcoxon": math.nan,
                       "p_holm": math.nan, "verdict": "baseline" if t == baseline else "n/a"}
                if t != baseline:
                    c = st.compare_paired(vals, base, st.HIGHER_IS_BETTER[m], seed=seed)
                    row.update(diff_mean=c["diff_mean"], ci_low=c["ci_low"], ci_high=c["ci_high"], p_wilcoxon=c["p"],
                               n_pairs=c["n"], n_inf_pairs=c["n_inf"], _better=c["better"])
                    tests.append(row)
                rows.append(row)
    adjusted = st.holm([r["p_wilcoxon"] for r in tests])
    for r, p in zip(tests, adjusted):
        r["p_holm"] = float(p)
        r["verdict"] = st.verdict(float(p), r.pop("_better"), alpha)
    n_pairs = min((r["n_pairs"] for r in tests), default=0)
    note = None
    if n_pairs < st.MIN_PAIRED_CASES:
        note = (f"no p-values: {n_pairs} paired cases, fewer than {st.MIN_PAIRED_CASES} (a two-sided Wilcoxon "
                f"signed-rank test on 5 pairs cannot reach p < 0.05); pool more folds (-f 0 1 2 3 4)")
    return {"summary": rows, "n_comparisons": int(np.sum(~np.isnan([r["p_wilcoxon"] for r in tests]))),
            "p_value_note": note}


def _ranking(cv, trainers: list[str], alpha: float, seed: int) -> dict:
    keys = list(cv.classes)
    values = np.array([[[cv.scores[t][c][k][m] for k in keys for m in METRICS] for c in cv.cases] for t in trainers],
                      dtype=float)
    ranks, kept = st.case_ranks(values, [st.HIGHER_IS_BETTER[m] for _ in keys for m in METRICS])
    out = {"items": [f"{k}:{m}" for k in keys for m in METRICS], "n_cases": int(len(kept))}
    if len(kept) == 0:
        return out | {"mean_rank": [math.nan] * len(trainers), "place": [1] * len(trainers),
                      "place_frequency": [[math.nan] * len(trainers)] * len(trainers),
                      "holds_place": [math.nan] * len(trainers), "n_resamples": 0, "friedman": None}
    out.update(st.rank_stability(ranks, seed=seed))
    out["friedman"] = st.friedman_nemenyi(ranks, alpha)
    return out


# ---------------------------------------------------------------------------------- the table
def _fmt_value(x: float, metric: str) -> str:
    return format_number(x, 2 if metric == "hd95" else 3)


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def format_summary(result: dict) -> str:
    """Markdown: the paired comparison with the baseline, then the ranking."""
    b = result["baseline"]
    lines = [f"**{result['dataset']} {result['configuration']}** ({result['plans']}), folds "
             f"{' '.join(map(str, result['folds']))}: {len(result['cases'])} cross-validation cases, baseline "
             f"`{b}`, NSD at {result['tolerance_mm']:g} mm.",
             f"Δ: paired mean difference to the baseline [95 % bootstrap CI]; p: two-sided Wilcoxon signed-rank, "
             + (f"Holm-corrected over the {result['n_comparisons']} comparisons; verdict at α {result['alpha']:g}."
                if result["n_comparisons"] else "none here (see below)."), ""]
    if result["p_value_note"]:
        lines += [result["p_value_note"], ""]
    lines += ["| class | metric | trainer | mean ± std | median | Δ [95 % CI] | p (Holm) | vs baseline |",
              "|---|---|---|---|---|---|---|---|"]
    prev = None
    for r in result["summary"]:
        m = r["metric"]
        f = lambda x: _fmt_value(x, m)  # noqa: E731
        cls = r["name"] if r["name"] == r["label"] else f"{r['label']} {r['name']}"
        head = (cls, METRIC_NAMES[m]) if (r["label"], m) != prev else ("", "")
        prev = (r["label"], m)
        inf = f" (+{r['n_inf']} inf)" if r["n_inf"] else ""
        spread = f"{f(r['mean'])} ± {f(r['std'])}{inf}" if not math.isnan(r["mean"]) or not r["n_inf"] else \
            f"inf ({r['n_inf']} cases)"
        if r["trainer"] == b:
            diff, p, verdict, name = "", "", "", f"`{r['trainer']}` (baseline)"
        else:
            n_inf = r.get("n_inf_pairs", 0)
            diff = (f"{'+' if r['diff_mean'] > 0 else ''}{f(r['diff_mean'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]"
                    + (f", {n_inf} inf pairs" if n_inf else "")) if not math.isnan(r["diff_mean"]) else \
                (f"{n_inf} inf pairs" if n_inf else "-")
            p, verdict, name = _fmt_p(r["p_holm"]), r["verdict"], f"`{r['trainer']}`"
            if verdict.startswith("significantly"):
                verdict = f"**{verdict}**"
        lines.append(f"| {head[0]} | {head[1]} | {name} | {spread} | {f(r['median'])} | "
                     f"{diff} | {p} | {verdict} |")
    lines += ["", *format_ranking(result)]
    return "\n".join(lines)


def format_ranking(result: dict) -> list[str]:
    rk, trainers = result["ranking"], result["trainers"]
    if not rk["n_cases"]:
        return ["Ranking: no case has a class that every trainer scored."]
    lines = [f"Ranking: per case, each class × metric ({', '.join(METRIC_NAMES[m] for m in result['metrics'])}) ranks "
             f"the trainers and their mean rank is ranked again; mean over {rk['n_cases']} cases; stability over "
             f"{rk['n_resamples']} bootstrap resamples of the cases.", "",
             "| place | trainer | mean rank | holds its place |", "|---|---|---|---|"]
    for t in np.argsort(rk["mean_rank"], kind="stable"):
        lines.append(f"| {rk['place'][t]} | `{trainers[t]}` | {rk['mean_rank'][t]:.2f} | "
                     f"{100 * rk['holds_place'][t]:.0f} % |")
    fr = rk["friedman"]
    if fr is None:
        lines += ["", "Friedman test and critical-difference diagram: need at least 3 trainers."]
    else:
        same = "; ".join(", ".join(trainers[i] for i in g) for g in fr["groups"]) or "none"
        p = _fmt_p(fr["p"]) if fr["p"] < 1e-4 else f"= {_fmt_p(fr['p'])}"
        lines += ["", f"Friedman χ² = {fr['statistic']:.2f} ({len(trainers) - 1} df), p {p} over "
                      f"{fr['n_cases']} cases; Nemenyi critical difference {fr['cd']:.2f} at α {fr['alpha']:g} "
                      f"(not significantly different: {same})."]
    return lines
