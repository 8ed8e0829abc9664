"""Tables (Table 1, per-z-bin, calibration, completeness, Table 2) as rows of dicts, and their Markdown / text forms."""

from __future__ import annotations

import csv
import json
import math
from contextlib import contextmanager
from pathlib import Path

from photoz_spark.staging import earlier_output, job_staging

TABLE1_COLUMNS = [("split", "split"), ("n", "N"), ("sigma_nmad", "σ_NMAD"), ("f_out", "f_out"), ("bias", "bias"),
                  ("mse", "MSE"), ("mae", "MAE"), ("crps", "mean CRPS")]
PROBABILISTIC_COLUMNS = [("split", "split"), ("f_cat", "f_cat"), ("crps_median", "median CRPS"),
                         ("pit_ks", "PIT KS"), ("pit_cvm", "PIT CvM")]
Z_BIN_COLUMNS = [("z_bin", "z_spec bin"), ("n", "N"), ("sigma_nmad", "σ_NMAD"), ("f_out", "f_out"),
                 ("bias", "bias"), ("mse", "MSE"), ("mae", "MAE"), ("f_cat", "f_cat"), ("crps", "mean CRPS"),
                 ("crps_median", "median CRPS"), ("pit_ks", "PIT KS"), ("pit_cvm", "PIT CvM")]
CALIBRATION_COLUMNS = [("pdf", "PDFs"), ("pit_ks", "PIT KS"), ("pit_cvm", "PIT CvM"), ("crps", "mean CRPS"),
                       ("sigma_nmad", "σ_NMAD (mean)"), ("f_out", "f_out (mean)")]
COMPLETENESS_COLUMNS = [("kept", "kept"), ("n", "N"), ("z_conf_min", "zConf ≥"), ("sigma_nmad", "σ_NMAD"),
                        ("f_out", "f_out")]
TABLE2_COLUMNS = [("band_set", "band set"), ("n_bands", "bands"), ("n", "N test"), ("sigma_nmad", "σ_NMAD"),
                  ("f_out", "f_out"), ("bias", "bias"), ("mse", "MSE"), ("mae", "MAE"), ("crps", "mean CRPS")]
PERCENT = {"f_out", "f_cat", "kept"}


@contextmanager
def staged_report(reports_dir: Path, name: str, marker: str, job: str):
    """Yield a staging folder for ``reports_dir/name``, committed whole once the block succeeds.

    A job-level journaled commit (``staging.job_staging``): a failed run leaves the old report, a
    kill during the commit is finished or rolled back by the next job's start, a rerun replaces.
    ``reports_dir`` is ``<workdir>/reports``: the staging folder and journal go in the workdir.

    Args:
        reports_dir: the reports folder.
        name: the report's folder name.
        marker: the file every such report holds; a folder without it is never replaced.
        job: the job's name (in the staging and journal names).
    """
    reports_dir = Path(reports_dir)
    with job_staging(reports_dir.parent, job) as stage:
        staged = stage.output(name, reports_dir / name, check=earlier_output(marker, "report"))
        staged.mkdir(parents=True)
        yield staged
        stage.commit()


def format_value(key: str, value) -> str:
    """One cell: counts with separators, rates in percent, other numbers with 4 decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    if key in ("n", "n_bands"):
        return f"{int(value):,}"
    if key == "kept":
        return f"{100 * value:.0f} %"
    if key in PERCENT:
        return f"{100 * value:.2f} %"
    if key == "bias":
        return f"{value:+.4f}"
    return f"{value:.4f}"


def _cells(rows: list[dict], columns) -> list[list[str]]:
    return [[format_value(key, row.get(key)) for key, _ in columns] for row in rows]


def markdown_table(rows: list[dict], columns) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns`` = [(key, header), ...]."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k in ("split", "band_set", "pdf", "z_bin") else "---:" for k, _ in columns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(rows, columns)]
    return "\n".join(lines)


def text_table(rows: list[dict], columns) -> str:
    """The same table, aligned for a terminal."""
    table = [[h for _, h in columns], *_cells(rows, columns)]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in table)


def with_z_bin_labels(rows: list[dict]) -> list[dict]:
    return [{**row, "z_bin": f"{row['z_lo']:g}–{row['z_hi']:g}"} for row in rows]


def write_csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(data, path: Path) -> Path:
    Path(path).write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path


CALIBRATION_TEXT = {
    "model": ("The model carries a recalibration ({method}; fitted on the validation split when it was trained, "
              "stored in model.json; the scoring job applies it). Test split, the network's own PDFs before and "
              "after it:"),
    "validation": ("The model carries **no** recalibration. The rows below show what a recalibration *fitted here "
                   "on the validation split* ({method}, {n_fit:,} objects) would do on the test split; it is "
                   "not part of the model (train with `train.recalibrate=true` to store one):"),
    "none": "No recalibration shown: the model carries none and the validation split was not evaluated.",
}


COMPLETENESS_TEXT = ("Objects kept by a cut on zConf, the PDF's mass within z_phot ± 0.05 (1 + z_phot) (highest "
                     "first), on the {pdf} PDFs (those the scoring job outputs); z_phot is that PDF's mean:")


def evaluation_markdown(info: dict, table1: list[dict], by_z: list[dict], calibration: dict, figures: dict,
                        completeness: dict | None = None) -> str:
    """The evaluation report.

    Args:
        info: model_uri, name, version, run_id, band_set, bands, features, evaluated (date).
        table1: one row per split (metrics.all_metrics plus "split").
        by_z: test-split rows of metrics.metrics_by_z_bin.
        calibration: source (model | validation | none), method, rows, n_fit, knots.
        figures: caption -> file name (relative to the report).
        completeness: pdf, rows (``metrics.completeness_curve``) of the test split (optional).
    """
    lines = [f"# Evaluation of {info['name']} version {info['version']}", "",
             f"- model: `{info['model_uri']}` (MLflow run `{info['run_id']}`)",
             f"- band set: {info['band_set']} ({len(info['bands'])} bands: {', '.join(info['bands'])})",
             f"- labelled table: `{info['features']}`", f"- evaluated: {info['evaluated']}", "",
             ("z_phot is the mean of each predicted mixture; Δz = z_phot − z_spec; σ_NMAD = 1.48 median(|Δz|/(1+z_spec)); "
             "f_out: |Δz|/(1+z_spec) > 0.15; bias: median(Δz/(1+z_spec)); MSE, MAE of Δz; f_cat: |Δz| > 1; "
             "CRPS in closed form for the Gaussian mixture; PIT KS / CvM: Kolmogorov-Smirnov / Cramér-von Mises "
             "distance of the PIT values from U(0, 1)."), "",
             "## Table 1: metrics per split", "", markdown_table(table1, TABLE1_COLUMNS), "",
             "Probabilistic calibration (PIT against U(0, 1); 0 = perfectly calibrated):", "",
             markdown_table(table1, PROBABILISTIC_COLUMNS), "",
             "## Metrics per z_spec bin (test split)", "", markdown_table(with_z_bin_labels(by_z), Z_BIN_COLUMNS), "",
             "## Recalibration (test split)", "",
             CALIBRATION_TEXT[calibration["source"]].format(n_fit=calibration.get("n_fit", 0),
                                                            method=calibration_method_text(calibration))]
    if calibration["rows"]:
        lines += ["", markdown_table(calibration["rows"], CALIBRATION_COLUMNS)]
    if completeness:
        lines += ["", "## Completeness: f_out and σ_NMAD vs a zConf cut (test split)", "",
                  COMPLETENESS_TEXT.format(pdf=completeness["pdf"]), "",
                  markdown_table(completeness["rows"], COMPLETENESS_COLUMNS)]
    lines += ["", "## Figures", ""]
    for caption, name in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)


def calibration_method_text(calibration: dict) -> str:
    """The recalibration method in words: a mixture (nodes) or a PIT map (knots)."""
    if calibration.get("method") == "mixture":
        return f"calibrated mixture, {calibration.get('nodes', 0)} nodes"
    return f"PIT map, {calibration.get('knots', 0)} knots"
