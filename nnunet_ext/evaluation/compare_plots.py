"""Pictures of a comparison (:func:`.compare.compare_trainers`), rendered to PNG bytes (Agg).

- :func:`boxplots_png`: a grid of class (rows) × metric (columns); per trainer a box (quartiles,
  whiskers at 1.5 IQR) with every case as a point, and each case joined to the same case of the
  baseline by a faint line. +inf HD95 (a structure missed or hallucinated) sits on a marked band
  above the finite values.
- :func:`ranking_png`: how often each trainer holds each place over bootstrap resamples of the
  cases and, with ≥ 3 trainers, the critical-difference diagram (Demšar 2006): mean ranks on an
  axis, the Nemenyi critical difference as a bar, trainers not significantly different joined.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np

METRIC_TITLES = {"dice": "Dice", "hd95": "HD95 (mm)", "nsd": "NSD"}


def _figure(*args, **kwargs):
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure      # no pyplot: no global state, no GUI back-end
    return Figure(*args, **kwargs)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def short_names(trainers: list[str]) -> tuple[list[str], str]:
    """Trainer names without the ``_...`` suffix they all share (e.g. a short-run budget
    ``_2epochs_10iters``), and that suffix (``""`` if none)."""
    suffix = os.path.commonprefix([t[::-1] for t in trainers])[::-1]
    suffix = suffix[suffix.find("_"):] if "_" in suffix else ""
    if not suffix or any(len(t) == len(suffix) for t in trainers):
        return list(trainers), ""
    return [t[:-len(suffix)] for t in trainers], suffix


def boxplots_png(result: dict) -> bytes:
    """Box plots of every class and metric (see the module docstring)."""
    trainers, baseline = result["trainers"], result["baseline"]
    order = [baseline] + [t for t in trainers if t != baseline]
    classes, metrics, cases = result["classes"], result["metrics"], result["cases"]
    scores = result["scores"]
    nrow, ncol = len(classes), len(metrics)
    width = max(3.2, 1.0 + 0.9 * len(order))
    fig = _figure(figsize=(width * ncol, 3.3 * nrow + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrow, ncol, squeeze=False))
    from matplotlib.collections import LineCollection

    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.12, 0.12, size=len(cases))
    colors = [f"C{i}" for i in range(len(order))]
    names, suffix = short_names(order)
    for r, (key, name) in enumerate(classes.items()):
        for c, m in enumerate(metrics):
            ax = axes[r, c]
            vals = np.array([[scores[t][case][key][m] for case in cases] for t in order], dtype=float)
            finite = np.isfinite(vals)
            top = np.nanmax(np.where(finite, vals, np.nan)) if finite.any() else 1.0
            bottom = np.nanmin(np.where(finite, vals, np.nan)) if finite.any() else 0.0
            span = (top - bottom) or 1.0
            inf_y = top + 0.12 * span
            shown = np.where(np.isposinf(vals), inf_y, vals)          # NaN stays NaN: not drawn
            pairs = [[(jitter[j], shown[0, j]), (i + jitter[j], shown[i, j])]       # each case to the baseline
                     for i in range(1, len(order)) for j in range(len(cases))
                     if not (np.isnan(shown[0, j]) or np.isnan(shown[i, j]))]
            ax.add_collection(LineCollection(pairs, colors="0.5", alpha=0.18, linewidths=0.7, zorder=1))
            data = [vals[i][finite[i]] for i in range(len(order))]
            ax.boxplot([d if d.size else [np.nan] for d in data], positions=range(len(order)), widths=0.5,
                       showfliers=False, medianprops={"color": "black"}, zorder=2,
                       patch_artist=True, boxprops={"facecolor": "none"})
            for i in range(len(order)):
                ok = ~np.isnan(shown[i])
                ax.scatter(i + jitter[ok], shown[i][ok], s=12, color=colors[i], alpha=0.75, zorder=3,
                           edgecolors="none")
            if np.isposinf(vals).any():                              # a tick "inf" above a dotted line
                ax.axhline(top + 0.06 * span, color="0.7", lw=0.6, ls=":")
                ticks = [y for y in ax.get_yticks() if bottom - 0.05 * span <= y <= top + 0.03 * span]
                ax.set_yticks([*ticks, inf_y], [f"{y:g}" for y in ticks] + ["inf"])
                ax.set_ylim(bottom - 0.05 * span, inf_y + 0.06 * span)
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([n + ("\n(baseline)" if t == baseline else "") for n, t in zip(names, order)],
                               rotation=25 if max(map(len, names)) > 10 else 0,
                               ha="right" if max(map(len, names)) > 10 else "center", fontsize=8)
            ax.set_title(f"{name} — {METRIC_TITLES.get(m, m)}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result['dataset']} {result['configuration']}: {len(cases)} cross-validation cases "
                 f"(folds {' '.join(map(str, result['folds']))}); lines pair each case with the baseline"
                 + (f"; trainers ...{suffix}" if suffix else ""),
                 fontsize=10)
    return _png(fig)


def ranking_png(result: dict) -> bytes:
    """Rank stability and, with ≥ 3 trainers, the critical-difference diagram."""
    rk = result["ranking"]
    trainers, suffix = short_names(result["trainers"])
    k = len(trainers)
    order = np.argsort(rk["mean_rank"], kind="stable")
    cd = rk.get("friedman")
    fig = _figure(figsize=(11 if cd else 6, 0.55 * k + 1.8), layout="constrained")
    axes = fig.subplots(1, 2 if cd else 1, squeeze=False)[0]

    ax = axes[0]
    freq = np.asarray(rk["place_frequency"])
    for pos, t in enumerate(order):
        left = 0.0
        for place in range(k):
            w = freq[t, place]
            if w > 0:
                ax.barh(pos, w, left=left, color=f"C{place}", edgecolor="white", height=0.7)
                if w >= 0.08:
                    ax.text(left + w / 2, pos, f"{place + 1}", ha="center", va="center", fontsize=8, color="white")
            left += w
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"{trainers[t]}  (mean rank {rk['mean_rank'][t]:.2f})" for t in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"fraction of {rk['n_resamples']} bootstrap resamples of the cases in each place (1 = best)",
                  fontsize=8)
    ax.set_title("rank stability" + (f" (trainers ...{suffix})" if suffix else ""), fontsize=10)

    if cd:
        ax = axes[1]
        mr = np.asarray(rk["mean_rank"])
        ax.set_xlim(k + 0.3, 0.7)                      # best (rank 1) on the right, as in Demšar's diagrams
        ax.set_ylim(-(math.ceil(k / 2) + 1.0), 2.2)
        ax.axis("off")
        ax.hlines(0, 1, k, color="black", lw=1)
        for r in range(1, k + 1):
            ax.vlines(r, 0, 0.25, color="black", lw=1)
            ax.text(r, 0.45, str(r), ha="center", va="bottom", fontsize=8)
        ax.hlines(1.5, 1, 1 + cd["cd"], color="black", lw=2)
        ax.text(1 + cd["cd"] / 2, 1.65, f"CD = {cd['cd']:.2f}", ha="center", va="bottom", fontsize=8)
        half = math.ceil(k / 2)
        for pos, t in enumerate(order):
            y = -(pos % half) - 1.2
            right = pos < half                          # the better half is labelled on the right
            x_text = 0.75 if right else k + 0.25
            ax.plot([mr[t], mr[t], x_text], [0, y, y], color="black", lw=0.8)
            ax.text(x_text + (0.05 if right else -0.05), y, f"{trainers[t]} ({mr[t]:.2f})", va="center",
                    ha="left" if right else "right", fontsize=8)
        for g, group in enumerate(cd["groups"]):
            lo, hi = mr[group[0]], mr[group[-1]]
            ax.hlines(-0.35 - 0.22 * g, lo - 0.04, hi + 0.04, color="tab:red", lw=3)
        ax.set_title(f"critical difference (Nemenyi, α {cd['alpha']:g}); Friedman p = {cd['p']:.3g}, "
                     f"{cd['n_cases']} cases", fontsize=10)
    return _png(fig)
