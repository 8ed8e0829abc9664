"""Stage of jobs/ablation.py: one model per band set, identical splits and settings -> Table 2, Fig. 7.

For each band set the features are built (jobs/build_features.py, same split seed and
overrides) and a model ``<prefix>-<band_set>`` is trained and registered (jobs/train.py, same
overrides); the job passes those two jobs' ``main`` in, so each step runs exactly as it does
on its own. Between the two, the split columns of all band sets are compared on their shared
ids (the split is a hash of the id, so they must agree). Each trained version is evaluated on
its test split (``evaluate.run.evaluate_model``), and the measured ordering is checked against
the one the paper reports. With ``skip_existing`` a band set whose features and latest model
were made with the same settings is not rebuilt or retrained: a killed ablation restarts
where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from photoz_spark import hats
from photoz_spark.config import load_config, require, resolve_recipe
from photoz_spark.errors import InputError
from photoz_spark.evaluate import report
from photoz_spark.evaluate.run import EvalSettings, evaluate_model
from photoz_spark.features.catalog import LAYOUT_FILE, FeaturesCatalog
from photoz_spark.features.split import SPLITS
from photoz_spark.metrics import figures
from photoz_spark.registry.resolve import latest_matching_version

REPORT_NAME = "ablation"
RESERVED_KEYS = ("features.band_set", "features.split.seed", "train.band_set", "mlflow.model_name")
SIGMA_NMAD_SE = 1.164   # standard error of sigma_NMAD ~ 1.164 sigma_NMAD / sqrt(N) (median of a half-normal)


@dataclass(frozen=True)
class AblationSettings:
    """The ``ablation`` section, checked."""

    band_sets: tuple[str, ...]
    model_prefix: str
    split_seed: int
    features_overrides: tuple[str, ...]
    train_overrides: tuple[str, ...]
    skip_existing: bool
    batch_size: int

    @classmethod
    def from_config(cls, cfg: dict, registry) -> AblationSettings:
        """Raises ConfigError/ValueError naming the setting to change."""
        s = cls(tuple(str(b) for b in cfg["band_sets"]), str(cfg["model_prefix"]), int(cfg["split_seed"]),
                tuple(str(o) for o in cfg["features_overrides"]), tuple(str(o) for o in cfg["train_overrides"]),
                bool(cfg["skip_existing"]), int(cfg["batch_size"]))
        require(len(s.band_sets) >= 1 and len(set(s.band_sets)) == len(s.band_sets),
                f"ablation.band_sets must list distinct band sets, got {list(s.band_sets)}")
        for band_set in s.band_sets:
            registry.band_set(band_set)  # unknown -> ValueError listing the known ones
        require(bool(s.model_prefix), "ablation.model_prefix must not be empty")
        require(s.batch_size >= 1, f"ablation.batch_size must be >= 1, got {s.batch_size}")
        for text in (*s.features_overrides, *s.train_overrides):
            key = text.split("=", 1)[0].strip()
            require("=" in text, f"ablation overrides must be key=value strings, got {text!r}")
            require(key not in RESERVED_KEYS, f"{key} is set per band set by the ablation; use "
                                              "ablation.band_sets / ablation.split_seed / ablation.model_prefix")
        return s

    def model_name(self, band_set: str) -> str:
        return f"{self.model_prefix}-{band_set}"

    def features_overrides_for(self, band_set: str) -> list[str]:
        return [*self.features_overrides, f"features.band_set={band_set}", f"features.split.seed={self.split_seed}"]

    def train_overrides_for(self, band_set: str) -> list[str]:
        return [*self.train_overrides, f"train.band_set={band_set}", f"mlflow.model_name={self.model_name(band_set)}"]


def common_overrides(config: dict, job: str) -> list[str]:
    """What the features or train sub-jobs inherit from the ablation's own configuration."""
    shared = [f"bands_file={config['bands_file']}"]
    return shared + ([f"mlflow.tracking_uri={config['mlflow']['tracking_uri']}",
                      f"mlflow.experiment={config['mlflow']['experiment']}"] if job == "train" else [])


def features_up_to_date(features_dir: Path, overrides: list[str], registry) -> bool:
    """Whether features_dir's layout.json is what building with ``overrides`` would write."""
    from photoz_spark.features.build import layout
    from photoz_spark.features.run import feature_spec, input_schema

    path = features_dir / LAYOUT_FILE
    if not path.is_file():
        return False
    cfg = load_config("features.yaml", overrides=overrides)["features"]
    matched = features_dir.parent.parent / "matched" / cfg["matched"]  # for settings left auto
    if not (matched / hats.PROPERTIES_FILE).is_file():
        return False
    spec = feature_spec(cfg, registry, hats.read_properties(matched), input_schema(matched))
    expected = json.loads(json.dumps(layout(spec, cfg["matched"])))
    return json.loads(path.read_text()) == expected


def training_params(train_config: dict, counts: dict) -> dict:
    """The run parameters a model trained with ``train_config`` on these row counts logged."""
    # the recipe resolved, as training logs it (explicit keys over the preset's values)
    return {**{f"train.{k}": v for k, v in resolve_recipe(train_config["train"]).items()},
            **{f"model.{k}": v for k, v in train_config["model"].items()},
            **{f"rows.{k}": v for k, v in counts.items()}}


def split_agreement(catalogs: dict[str, FeaturesCatalog]) -> dict[str, dict]:
    """Compare every band set's split column with the first one's on their shared ids.

    Returns:
        band set -> {"shared": ids in both, "disagree": of those, in another split}.

    Raises:
        ValueError: any disagreement (the features were built with different split settings).
    """
    names = list(catalogs)
    base = catalogs[names[0]].id_splits().to_pandas()
    out = {names[0]: {"shared": len(base), "disagree": 0}}
    for name in names[1:]:
        joined = base.merge(catalogs[name].id_splits().to_pandas(), on="id", suffixes=("_a", "_b"))
        out[name] = {"shared": len(joined), "disagree": int((joined["split_a"] != joined["split_b"]).sum())}
        if out[name]["disagree"]:
            raise InputError(f"the split of features/{name} disagrees with features/{names[0]} on "
                             f"{out[name]['disagree']} of {out[name]['shared']} shared ids: rebuild both with the "
                             "same features.split settings (rerun the ablation without --skip-existing)")
    return out


def _noise(metric: str, a: dict, b: dict) -> float:
    """Rough 1-sigma statistical error of metric(a) - metric(b) from the test-split sizes."""
    if metric == "f_out":  # (k + 1) / (n + 2): a rate of 0 measured on n objects is not known exactly
        rates = [((r["f_out"] * r["n"] + 1) / (r["n"] + 2), r["n"]) for r in (a, b)]
        var = [f * (1 - f) / n for f, n in rates]
    else:
        var = [(SIGMA_NMAD_SE * r["sigma_nmad"]) ** 2 / r["n"] for r in (a, b)]
    return math.sqrt(sum(var))


TRAINING_KEYS = ("epochs_run", "best_epoch", "stopped_early")   # from the model's model.json ("trained")


def _undertrained(row: dict) -> bool:
    """The model hit train.max_epochs without early stopping: its validation loss was still improving."""
    return row.get("stopped_early") is False


def _why(metric: str, better: dict, worse: dict) -> str:
    """Why a measured ordering may differ from the paper's: within the noise, under-training, or not known."""
    delta, noise = abs(better[metric] - worse[metric]), 2 * _noise(metric, better, worse)
    if delta <= noise:
        return (f"because the difference ({delta:.4f}) is within the statistical noise of the test split "
                f"(±{noise:.4f}, 2σ for N = {worse['n']:,} / {better['n']:,})")
    unfinished = [r for r in (worse, better) if _undertrained(r)]
    if unfinished:
        runs = ", ".join(f"{r['band_set']} best epoch {r['best_epoch']} of {r['epochs_run']}" for r in unfinished)
        return (f"because the models are under-trained: the difference ({delta:.4f}) exceeds the test split's "
                f"statistical noise (±{noise:.4f}, 2σ), but training stopped at train.max_epochs with the validation "
                f"loss still improving ({runs}; the paper trains to early stopping), so the ordering shows how fast "
                "each input trains rather than what its bands carry; rerun with more epochs, e.g. "
                "'ablation.train_overrides=[train.max_epochs=200]'")
    return (f"because this data does not reproduce the paper's ordering: the difference ({delta:.4f}) exceeds "
            f"the statistical noise (±{noise:.4f}, 2σ) and both models trained to early stopping, so it is real "
            "for these models (e.g. photometry whose extra bands add no redshift information)")


LABELS = {"sigma_nmad": "σ_NMAD", "f_out": "f_out"}


def _extreme_check(rows: dict, band_set: str, metric: str, lowest: bool, claim: str) -> dict:
    if band_set not in rows or len(rows) < 2:
        return {"status": "–", "text": f"– {claim}: not checked ({band_set} and another band set needed)"}
    pick = min if lowest else max
    best = pick(rows.values(), key=lambda r: r[metric])
    value = report.format_value(metric, rows[band_set][metric])
    if best["band_set"] == band_set or best[metric] == rows[band_set][metric]:
        return {"status": "✓", "text": f"✓ {claim} ({value})"}
    other = report.format_value(metric, best[metric])
    good, bad = (best, rows[band_set]) if lowest else (rows[band_set], best)
    return {"status": "✗", "text": f"✗ {claim}: not measured here, {best['band_set']} has {other} against "
                                   f"{band_set}'s {value}, " + _why(metric, good, bad)}


def _helps_check(rows: dict, richer: str, base: str, claim: str) -> dict:
    if richer not in rows or base not in rows:
        return {"status": "–", "text": f"– {claim}: not checked ({richer} and {base} needed)"}
    a, b = rows[richer], rows[base]
    shown = ", ".join(f"{LABELS[m]} {report.format_value(m, b[m])} → {report.format_value(m, a[m])}"
                      for m in LABELS)
    worse = [m for m in LABELS if a[m] > b[m]]
    if not worse:
        return {"status": "✓", "text": f"✓ {claim} ({shown})"}
    reasons = "; ".join(f"{LABELS[m]} does not improve {_why(m, b, a)}" for m in worse)
    return {"status": "✗", "text": f"✗ {claim}: not measured here ({shown}): {reasons}"}


def ordering_checks(table2: list[dict]) -> list[dict]:
    """The paper's orderings, each as a ✓ / ✗ (with a reason) / – (not checkable here) line.

    Paper: all 14 bands give the best σ_NMAD and f_out; optical-only (optical8) has the worst
    outlier rate; adding WISE, or GALEX, to the optical bands each improves both.
    """
    rows = {r["band_set"]: r for r in table2}
    return [
        _extreme_check(rows, "all14", "sigma_nmad", True, "all14 has the lowest σ_NMAD"),
        _extreme_check(rows, "all14", "f_out", True, "all14 has the lowest f_out"),
        _extreme_check(rows, "optical8", "f_out", False, "optical8 (optical only) has the highest f_out"),
        _helps_check(rows, "optical_wise12", "optical8", "adding WISE to optical8 helps (optical_wise12)"),
        _helps_check(rows, "optical_galex10", "optical8", "adding GALEX to optical8 helps (optical_galex10)"),
    ]


def ablation_markdown(table2: list[dict], checks: list[dict], agreement: dict, steps: dict, settings) -> str:
    """The ablation report: Table 2, the ordering checks, split agreement, what was (re)made, Fig. 7."""
    lines = ["# Band-set ablation (Table 2)", "",
             (f"One model per band set, trained with identical settings (`{' '.join(settings.train_overrides) or 'defaults'}`) "
             f"on features built with split seed {settings.split_seed}; metrics on each model's test split."), "",
             report.markdown_table(table2, report.TABLE2_COLUMNS), "",
             "## The paper's orderings", "", *[f"- {c['text']}" for c in checks], "",
             "## Identical splits", "",
             "Split column of each band set's features compared with the first one's on their shared ids:", ""]
    lines += [f"- {name}: {a['shared']:,} shared ids, {a['disagree']} in another split" for name, a in agreement.items()]
    lines += ["", "## Models", ""]
    lines += [f"- {name}: features {s['features']}, model {s['model']} (`{s['model_uri']}`)" for name, s in steps.items()]
    lines += ["", "## Fig. 7: z_phot vs z_spec per band set (test split)", "", "![Fig. 7](fig7_zphot_grid.png)", ""]
    return "\n".join(lines)


def _evaluate_version(registry, name: str, version: str, catalog, batch_size: int):
    """(ModelFiles, test-split Evaluation, training record) of registered ``name`` version ``version``."""
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.resolve import download_version

    files, directory = download_version(name, version)
    model = PhotozModel(directory, registry)
    evaluation = evaluate_model(model, catalog, EvalSettings(splits=("test",), batch_size=batch_size, example_z=()))
    return files, evaluation, model.meta.get("trained", {})


def prepare_features(config: dict, settings: AblationSettings, registry, workdir, build_main) -> dict[str, dict]:
    """Build (or, with skip_existing, keep when up to date) every band set's features. Returns the steps."""
    steps = {}
    for band_set in settings.band_sets:
        overrides = [*common_overrides(config, "features"), *settings.features_overrides_for(band_set)]
        kept = settings.skip_existing and features_up_to_date(Path(workdir.features) / band_set, overrides, registry)
        if not kept:
            build_main(["--workdir", str(workdir.root), *overrides])
        steps[band_set] = {"features": "kept" if kept else "built"}
    return steps


def model_version(config: dict, settings: AblationSettings, band_set: str, catalog, step: dict, workdir,
                  train_main) -> tuple[str, dict]:
    """The registered version to evaluate for ``band_set``: kept (skip_existing, same settings) or newly trained.

    Returns:
        (version, the train configuration it was or would be trained with).
    """
    overrides = [*common_overrides(config, "train"), *settings.train_overrides_for(band_set)]
    train_config = load_config("train.yaml", overrides=overrides)
    counts = {s: catalog.count(s) for s in SPLITS}
    version = None
    if settings.skip_existing and step["features"] == "kept":  # rebuilt features always mean a new model
        version = latest_matching_version(settings.model_name(band_set), training_params(train_config, counts))
    step["model"] = f"kept v{version}"
    if version is None:
        version = str(train_main(["--workdir", str(workdir.root), *overrides])["promotion"]["version"])
        step["model"] = f"trained v{version}"
    return version, train_config


def write_ablation_report(reports_dir: Path, table2: list[dict], panels: list[dict], checks: list[dict],
                          agreement: dict, steps: dict, settings: AblationSettings) -> dict:
    """reports/ablation/: Markdown, Table 2 as CSV and JSON, Fig. 7; replaced whole. Returns the paths."""
    with report.staged_report(reports_dir, REPORT_NAME, "ablation.md", "ablation") as out:
        figures.zphot_grid_figure(panels, out / "fig7_zphot_grid.png", "z_phot vs z_spec per band set, test split")
        report.write_csv(table2, out / "table2.csv")
        report.write_json({"table2": table2, "checks": checks, "split_agreement": agreement, "steps": steps},
                          out / "table2.json")
        (out / "ablation.md").write_text(ablation_markdown(table2, checks, agreement, steps, settings) + "\n")
    target = Path(reports_dir) / REPORT_NAME
    return {"report": target / "ablation.md", "figure": target / "fig7_zphot_grid.png",
            "tables": [target / "table2.csv", target / "table2.json"]}


def run_ablation(config: dict, registry, workdir, build_main, train_main) -> dict:
    """The whole ablation. Returns the summary the job prints.

    Args:
        config: the job configuration (``ablation`` section, bands_file, mlflow).
        registry: bands (conf/bands.yaml).
        workdir: a ``cli.Workdir``.
        build_main, train_main: ``main(argv)`` of jobs/build_features.py and jobs/train.py.

    Raises:
        ValueError / ConfigError: bad settings, or split assignments that disagree.
    """
    from photoz_spark.registry import tracking

    t0 = time.time()
    settings = AblationSettings.from_config(config["ablation"], registry)
    steps = prepare_features(config, settings, registry, workdir, build_main)  # all first: a split mismatch
    catalogs = {b: FeaturesCatalog(Path(workdir.features) / b) for b in settings.band_sets}  # stops before training
    agreement = split_agreement(catalogs)
    uri = tracking.tracking_uri(config, workdir)
    table2, panels = [], []
    for band_set in settings.band_sets:
        tracking.connect(uri, workdir, config["mlflow"]["experiment"])
        version, _ = model_version(config, settings, band_set, catalogs[band_set], steps[band_set], workdir, train_main)
        tracking.connect(uri, workdir, config["mlflow"]["experiment"])  # training may have pointed it elsewhere
        files, evaluation, trained = _evaluate_version(registry, settings.model_name(band_set), version,
                                                       catalogs[band_set], settings.batch_size)
        steps[band_set]["model_uri"] = files.uri
        row = {"band_set": band_set, "n_bands": len(registry.band_set(band_set)), "model": settings.model_name(band_set),
               "version": version, **{k: trained.get(k) for k in TRAINING_KEYS}, **evaluation.table1[0]}
        table2.append(row)
        panels.append({"label": f"{band_set} ({row['n_bands']} bands)", "z_spec": evaluation.test.z_spec,
                       "z_phot": evaluation.test.z_phot, "metrics": row})
    checks = ordering_checks(table2)
    paths = write_ablation_report(workdir.reports, table2, panels, checks, agreement, steps, settings)
    return {"table2": table2, "checks": checks, "split_agreement": agreement, "steps": steps, **paths,
            "seconds": time.time() - t0}
