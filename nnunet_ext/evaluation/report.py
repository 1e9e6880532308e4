"""An evaluation result (:func:`.folder.evaluate_folders`) as files and as a table.

- JSON: the result as it is (schema in :mod:`.folder`).
- CSV: one row per case and class with columns :data:`CSV_COLUMNS`, then one ``case = "mean"``
  row per class and a ``case = "mean", label = "all"`` row (the overall means); NaN / inf are
  written ``nan`` / ``inf``.
- :func:`write_outputs` writes both, or (on an error) neither, through :mod:`nnunet_ext.io`.
- :func:`format_summary`: markdown table of the class means and the overall mean.
"""

from __future__ import annotations

import os

from nnunet_ext.io import csv_writer, format_number, json_writer, write_all

CSV_COLUMNS = ("case", "label", "name", "dice", "hd95", "nsd", "n_ref", "n_pred")


def csv_rows(result: dict) -> list[dict]:
    """Rows of :data:`CSV_COLUMNS`: per case and class, then the class means, then overall."""
    names = result["labels"]
    rows = [{"case": c["case"], "label": k, "name": names[k], **{m: v[m] for m in CSV_COLUMNS[3:]}}
            for c in result["cases"] for k, v in c["metrics"].items()]
    means = [*((k, names[k], v) for k, v in result["mean"].items()), ("all", "all", result["overall"])]
    rows += [{"case": "mean", "label": k, "name": name, "dice": v["dice"], "hd95": v["hd95"], "nsd": v["nsd"],
              "n_ref": "", "n_pred": ""} for k, name, v in means]
    return rows


def write_outputs(result: dict, json_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    """Write the JSON and the CSV of ``result``: both, or (on an error) neither."""
    write_all([(json_path, json_writer(result)), (csv_path, csv_writer(csv_rows(result), CSV_COLUMNS))])


def format_summary(result: dict) -> str:
    """A short markdown table of the class means and the overall mean."""
    f = format_number

    tol = result["tolerance_mm"]
    lines = [f"| class | Dice | HD95 (mm) | HD95 finite (mm) | NSD@{tol:g}mm | cases (both empty / one empty) |",
             "|---|---|---|---|---|---|"]
    for k, m in result["mean"].items():
        name = result["labels"][k]
        label = k if name == k else f"{k} {name}"
        lines.append(f"| {label} | {f(m['dice'])} | {f(m['hd95'], 2)} | {f(m['hd95_finite'], 2)} | {f(m['nsd'])} | "
                     f"{m['n_cases']} ({m['n_both_empty']} / {m['n_one_empty']}) |")
    o = result["overall"]
    lines.append(f"| **mean** | {f(o['dice'])} | {f(o['hd95'], 2)} | {f(o['hd95_finite'], 2)} | {f(o['nsd'])} | "
                 f"{len(result['cases'])} |")
    return "\n".join(lines)
