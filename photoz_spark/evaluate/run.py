"""Stage of jobs/evaluate.py: a registered model on a labelled features catalog -> report + MLflow.

The model is fetched with ``registry.resolve.resolve_model`` (alias or version), each split of the
labelled catalog is streamed through it on the driver (``predict``: why no Spark is needed is
said there), and Table 1, the per-z-bin table, the recalibration comparison, the completeness
table (f_out and sigma_NMAD of the objects kept by a zConf cut), Figs. 3-6 and the completeness figure are
written to ``reports/<model>-v<version>/`` through a staging folder (a rerun replaces the
report whole). The files and the ``eval_`` metrics are then logged to the model's own run.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from photoz_spark.config import require
from photoz_spark.errors import InputError
from photoz_spark.evaluate import report
from photoz_spark.evaluate.predict import SplitResult, predict_split
from photoz_spark.features.catalog import FeaturesCatalog
from photoz_spark.features.split import SPLITS
from photoz_spark.metrics import all_metrics, completeness_curve, figures, metrics_by_z_bin
from photoz_spark.model import calibration as cal

FIGURE_SPLIT = "test"
TABLE1_KEYS = ("n", "sigma_nmad", "f_out", "bias", "mse", "mae", "crps")
MIN_CALIBRATION_FIT = 10   # PitCalibration.fit / MixtureCalibration.fit need this many objects
CALIBRATED_LABEL = {"model": "recalibrated (model's)", "validation": "recalibrated (fitted here on validation)"}


@dataclass(frozen=True)
class EvalSettings:
    """The ``evaluate`` settings that shape the computation (not where the model comes from)."""

    splits: tuple[str, ...] = SPLITS
    batch_size: int = 4096
    z_bins: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    example_z: tuple[float, ...] = (0.8, 1.6, 2.4, 3.2)
    calibration_knots: int = 50
    recalibration: str = "mixture"
    calibration_nodes: int = 8

    @classmethod
    def from_config(cls, cfg: dict) -> EvalSettings:
        """Checked settings from the ``evaluate`` section; a ConfigError says what to change."""
        s = cls(tuple(cfg["splits"]), int(cfg["batch_size"]), tuple(float(z) for z in cfg["z_bins"]),
                tuple(float(z) for z in cfg["example_z"]), int(cfg["calibration_knots"]), str(cfg["recalibration"]),
                int(cfg["calibration_nodes"]))
        unknown = [x for x in s.splits if x not in SPLITS]
        require(not unknown and s.splits, f"evaluate.splits must name some of {', '.join(SPLITS)}, got {list(s.splits)}")
        require(FIGURE_SPLIT in s.splits, f"evaluate.splits must include '{FIGURE_SPLIT}' (the figures show it)")
        require(s.batch_size >= 1, f"evaluate.batch_size must be >= 1, got {s.batch_size}")
        require(len(s.z_bins) >= 2 and all(b > a for a, b in zip(s.z_bins, s.z_bins[1:], strict=False)),
                f"evaluate.z_bins must be at least two increasing edges, got {list(s.z_bins)}")
        require(1 <= len(s.example_z) <= 8, "evaluate.example_z must list 1 to 8 redshifts")
        require(s.calibration_knots >= 1, "evaluate.calibration_knots must be >= 1")
        require(s.recalibration in ("mixture", "pit_map"),
                f"evaluate.recalibration must be mixture or pit_map, got {s.recalibration!r}")
        require(s.calibration_nodes >= 1, "evaluate.calibration_nodes must be >= 1")
        return s


@dataclass
class Evaluation:
    """Everything the report shows."""

    results: dict[str, SplitResult]
    table1: list[dict]
    by_z: list[dict]
    calibration: dict = field(default_factory=dict)   # source, method, rows, n_fit, knots, fitted (Calibration|None)
    completeness: dict = field(default_factory=dict)  # pdf (which PDFs' zConf and z_phot), rows (completeness_curve)

    @property
    def test(self) -> SplitResult:
        return self.results[FIGURE_SPLIT]


def check_compatible(model, catalog: FeaturesCatalog) -> None:
    """The catalog's feature sequence must be the one the model was trained on."""
    wanted, found = model.meta["layout"]["bands"], catalog.layout["bands"]
    if wanted != found:
        raise InputError(f"{catalog.directory} holds band set {catalog.layout['band_set']!r} ({len(found)} bands), "
                         f"the model was trained on {model.meta['layout']['band_set']!r}: set evaluate.features="
                         f"features/{model.meta['layout']['band_set']} or build it with jobs/build_features.py "
                         f"--band-set {model.meta['layout']['band_set']}")


def check_splits(catalog: FeaturesCatalog, splits) -> dict[str, int]:
    """Rows per split; an empty split is refused with what to change."""
    counts = {split: catalog.count(split) for split in splits}
    for split, n in counts.items():
        if n == 0:
            raise InputError(f"the {split} split of {catalog.directory} is empty: rebuild the features with "
                             f"features.split.{split} > 0, or leave it out (evaluate.splits)")
    return counts


def evaluate_model(model, catalog: FeaturesCatalog, settings: EvalSettings) -> Evaluation:
    """Stream each split through ``model`` and compute every table.

    The recalibration shown is the model's own when it carries one; otherwise one fitted here on
    the validation split (when evaluated; ``settings.recalibration``) and applied to the test split
    only, to show what it would do. The completeness table cuts the test split on the zConf of the
    PDFs the scoring job outputs: the model's recalibrated ones when it carries a calibration,
    else the network's.

    Args:
        model: a ``registry.artifact.PhotozModel``.
        catalog: the labelled features catalog.
        settings: splits, batch size, z bins, example redshifts, knots.

    Returns:
        The evaluation (per-object results, Table 1, per-z-bin table, recalibration comparison,
        completeness table).
    """
    check_compatible(model, catalog)
    check_splits(catalog, settings.splits)
    fitted, source, n_fit = model.calibration, "model" if model.calibration else "none", 0
    results = {}
    for split in (s for s in SPLITS if s in settings.splits):  # validation before test: it fits the what-if
        is_test = split == FIGURE_SPLIT
        fit_here = split == "validation" and fitted is None
        results[split] = predict_split(model, catalog, split, settings.batch_size, fitted if is_test else None,
                                       settings.example_z if is_test else (), keep_mixture=fit_here)
        if fit_here and len(results[split]) >= MIN_CALIBRATION_FIT:
            r = results[split]
            fitted = cal.fit(settings.recalibration, *r.mixture, r.z_spec, r.pit, settings.calibration_knots,
                             settings.calibration_nodes)
            source, n_fit = "validation", len(r)
        results[split].mixture = None  # only the fit needed it
    table1 = [{"split": split, **all_metrics(r.z_phot, r.z_spec, r.crps, r.pit)} for split, r in results.items()]
    test = results[FIGURE_SPLIT]
    by_z = metrics_by_z_bin(test.z_phot, test.z_spec, settings.z_bins, test.crps, test.pit)
    calibration = {"source": source, "fitted": fitted, "n_fit": n_fit, **describe(fitted),
                   "rows": calibration_rows(test) if test.calibrated else []}
    return Evaluation(results, table1, by_z, calibration, completeness(test, source == "model"))


def describe(calibration: cal.Calibration | None) -> dict:
    """method (none | mixture | pit_map) and its size: nodes (mixture) or interior knots (pit_map)."""
    if isinstance(calibration, cal.MixtureCalibration):
        return {"method": "mixture", "nodes": len(calibration.nodes)}
    if isinstance(calibration, cal.PitCalibration):
        return {"method": "pit_map", "knots": len(calibration.pit_knots) - 2}
    return {"method": "none"}


def completeness(test: SplitResult, calibrated: bool) -> dict:
    """f_out and sigma_NMAD of the test objects kept by a zConf cut (``metrics.completeness_curve``),
    on the recalibrated PDFs' zConf and mean when ``calibrated`` (what the scoring job outputs)."""
    return {"pdf": "recalibrated (model's)" if calibrated else "network (raw)",
            "rows": completeness_curve(*_completeness_inputs(test, calibrated))}


def _completeness_inputs(test: SplitResult, calibrated: bool):
    """z_phot, z_spec, z_conf of the test split's (recalibrated, when ``calibrated``) PDFs."""
    if calibrated:
        return test.calibrated["z_phot"], test.z_spec, test.calibrated["z_conf"]
    return test.z_phot, test.z_spec, test.z_conf


def calibration_rows(test: SplitResult) -> list[dict]:
    """PIT KS/CvM, mean CRPS, sigma_NMAD and f_out of the mean, before and after recalibration."""
    rows = []
    for label, z_phot, crps, pit in (("network (raw)", test.z_phot, test.crps, test.pit),
                                     ("recalibrated", *(test.calibrated[k] for k in ("z_phot", "crps", "pit")))):
        m = all_metrics(z_phot, test.z_spec, crps, pit)
        rows.append({"pdf": label, **{k: m[k] for k in ("pit_ks", "pit_cvm", "crps", "sigma_nmad", "f_out")}})
    return rows


def write_report(evaluation: Evaluation, info: dict, out_dir: Path) -> dict:
    """Write the Markdown report, CSV/JSON tables and Figs. 3-6 into ``out_dir``.

    Returns:
        {"report": path, "figures": [paths], "tables": [paths]}.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    test, calib = evaluation.test, evaluation.calibration
    label = CALIBRATED_LABEL.get(calib["source"], "")
    calibrated = test.calibrated or {}
    where = f"{info['name']} v{info['version']} ({info['band_set']}), test split"
    test_row = next(r for r in evaluation.table1 if r["split"] == FIGURE_SPLIT)
    figs = {
        "Fig. 3: z_phot vs z_spec": figures.zphot_figure(test.z_spec, test.z_phot, out_dir / "fig3_zphot_zspec.png",
                                                         where, test_row),
        "Fig. 4: CRPS distribution": figures.crps_figure(test.crps, out_dir / "fig4_crps.png", where,
                                                         calibrated.get("crps"), label),
        "Fig. 5: example PDFs and CDFs": figures.example_pdfs_figure(
            test.examples, out_dir / "fig5_example_pdfs.png", where,
            calib["fitted"] if calib["source"] == "model" else None, label),
        "Fig. 6: PIT histogram and Q-Q plot": figures.pit_figure(test.pit, out_dir / "fig6_pit.png", where,
                                                                 calibrated.get("pit"), label),
        "Completeness: f_out and σ_NMAD vs the fraction kept by a zConf cut": figures.completeness_figure(
            *_completeness_inputs(test, calib["source"] == "model"), out_dir / "completeness.png",
            f"{where}, {evaluation.completeness['pdf']} PDFs"),
    }
    tables = [report.write_csv(evaluation.table1, out_dir / "table1.csv"),
              report.write_csv(evaluation.by_z, out_dir / "metrics_by_z.csv"),
              report.write_csv(evaluation.completeness["rows"], out_dir / "completeness.csv"),
              report.write_json({"model": info, "table1": evaluation.table1, "by_z": evaluation.by_z,
                                 "calibration": {k: v for k, v in calib.items() if k != "fitted"},
                                 "completeness": evaluation.completeness}, out_dir / "evaluation.json")]
    markdown = report.evaluation_markdown(info, evaluation.table1, evaluation.by_z, calib,
                                          {caption: path.name for caption, path in figs.items()},
                                          evaluation.completeness)
    path = out_dir / "report.md"
    path.write_text(markdown + "\n")
    return {"report": path, "figures": list(figs.values()), "tables": tables}


def mlflow_metrics(evaluation: Evaluation) -> dict[str, float]:
    """Table 1 as ``eval_<split>_<metric>``, the test split's PIT KS and CRPS before/after recalibration,
    and its completeness table as ``eval_test_{f_out,sigma_nmad,z_conf_min}_cNN`` (NN: percent kept)."""
    out = {f"eval_{row['split']}_{k}": float(row[k]) for row in evaluation.table1 for k in TABLE1_KEYS}
    out.update({f"eval_{row['split']}_pit_ks": float(row["pit_ks"]) for row in evaluation.table1})
    for row in evaluation.calibration["rows"][1:]:
        suffix = "model_recalibrated" if evaluation.calibration["source"] == "model" else "val_fit_recalibrated"
        out[f"eval_test_pit_ks_{suffix}"] = float(row["pit_ks"])
        out[f"eval_test_crps_{suffix}"] = float(row["crps"])
    for row in evaluation.completeness.get("rows", []):
        for k in ("f_out", "sigma_nmad", "z_conf_min"):
            out[f"eval_test_{k}_c{round(100 * row['kept']):02d}"] = float(row[k])
    return {k: v for k, v in out.items() if np.isfinite(v)}


def features_dir(cfg: dict, workdir, band_set: str) -> Path:
    """evaluate.features (relative to the workdir, or absolute), default features/<band set>."""
    if not cfg["features"]:
        return Path(workdir.features) / band_set
    path = Path(cfg["features"])
    return path if path.is_absolute() else Path(workdir.root) / path


def evaluate_registered(config: dict, registry, workdir) -> dict:
    """The whole evaluation stage. Returns the summary the job prints.

    Raises:
        ValueError / ConfigError: no such model or version, wrong band set, empty split, bad settings.
        FileNotFoundError: no features catalog.
        ConnectionError: the tracking server does not answer.
    """
    from photoz_spark.registry import tracking
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.resolve import resolve_model

    t0 = time.time()
    cfg = config["evaluate"]
    settings = EvalSettings.from_config(cfg)
    files, model_dir = resolve_model(config, workdir, "evaluate")
    uri, run_id = tracking.tracking_uri(config, workdir), files.run_id
    model = PhotozModel(model_dir, registry)
    band_set = model.meta["layout"]["band_set"]
    catalog = FeaturesCatalog(features_dir(cfg, workdir, band_set))
    evaluation = evaluate_model(model, catalog, settings)
    name = f"{files.name}-v{files.version}"
    target = Path(workdir.reports) / name
    info = {"name": files.name, "version": files.version, "model_uri": files.uri, "run_id": run_id,
            "band_set": band_set, "bands": model.meta["layout"]["bands"], "features": str(catalog.directory),
            "evaluated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    with report.staged_report(workdir.reports, name, "report.md", "evaluate") as staged:
        written = write_report(evaluation, info, staged)
    metrics = mlflow_metrics(evaluation)
    if cfg["log_to_mlflow"]:
        tracking.log_to_run(uri, run_id, target, "evaluation", metrics)
    return {"model_uri": files.uri, "run_id": run_id, "tracking_uri": uri, "band_set": band_set,
            "features": str(catalog.directory), "report": target / written["report"].name,  # staged paths -> committed ones
            "figures": [target / p.name for p in written["figures"]], "tables": [target / p.name for p in written["tables"]],
            "table1": evaluation.table1, "calibration": {k: v for k, v in evaluation.calibration.items() if k != "fitted"},
            "completeness": evaluation.completeness,
            "metrics": metrics, "logged": bool(cfg["log_to_mlflow"]), "seconds": time.time() - t0}
