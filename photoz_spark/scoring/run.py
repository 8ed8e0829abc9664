"""Spark stage of jobs/score_catalog.py: resolve the model, validate the input, score, write.

The model's files (weights + model.json bytes) are broadcast once; each task runs
``task.scorer`` (Spark-free, so bench/gpu_check.py --job-path runs the same code): each Python
worker builds the network once per model and device and scores with ``kernel.score_batch``.
``hats.map_hats`` runs it as one Spark task (``mapInArrow``) per input pixel that reads the
pixel's file, scores it and writes the output file of the same pixel, so no row goes through a
shuffle. The catalog is staged in a job
folder and committed at the end, so a killed run leaves no partial catalog at
``scores/<name>`` and a rerun replaces the earlier one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from photoz_spark import hats
from photoz_spark.bands import BandCatalog
from photoz_spark.calibration_kind import CALIBRATION_PROPERTY, method_of, property_value
from photoz_spark.config import require
from photoz_spark.errors import InputError
from photoz_spark.features.sequencing import band_columns
from photoz_spark.flags import FLAGS_COLUMN, Flag, count_flags
from photoz_spark.paths import check_output, safe_name
from photoz_spark.registry.resolve import ModelFiles
from photoz_spark.scoring.task import (  # noqa: F401 - the task's API
    Runtime,
    _checked_precision,
    load_model,
    scorer,
    task_gpus,
)

try:
    from pyspark.accumulators import AccumulatorParam
except ImportError:  # a GPU host with torch only: the kernel and load_model still work
    AccumulatorParam = object

@dataclass(frozen=True)
class ScorePlan:
    """What the stage reads and keeps: the input, its id/coordinate columns, the output."""

    source: Path
    name: str
    id_col: str
    ra_col: str
    dec_col: str
    order: int
    keep: tuple[str, ...]
    has_flags: bool


def input_and_output(cfg: dict, workdir) -> tuple[Path, str, Path]:
    """The input catalog, the output name and folder of ``score.input``/``score.output``; refuses
    (one line) an input that is not ``catalogs/<name>``/``matched/<run>`` and an output outside
    ``scores/`` or over the input, before any model is fetched or file written.

    Returns:
        (input folder, output name, output folder).
    """
    parts = Path(cfg["input"]).parts
    require(len(parts) == 2 and parts[0] in ("catalogs", "matched"),
            f"score.input must be catalogs/<name> or matched/<run>, got {cfg['input']!r}")
    safe_name(parts[1], "score.input")
    source = Path(workdir.root) / cfg["input"]
    name = safe_name(cfg["output"] or parts[1], "score.output")
    target = check_output(Path(workdir.scores) / name, workdir.root, [source], "score.output")
    return source, name, target


def plan(cfg: dict, registry: BandCatalog, workdir, band_set) -> ScorePlan:
    """Check the input catalog before any Spark work; every missing column in one message.

    Raises:
        ValueError: bad setting, no catalog, or columns missing.
    """
    source, name, _ = input_and_output(cfg, workdir)
    parts = Path(cfg["input"]).parts
    require(int(cfg["batch_size"]) >= 1, f"score.batch_size must be >= 1, got {cfg['batch_size']}")
    if not (source / hats.PROPERTIES_FILE).is_file():
        raise InputError(f"input catalog not found: {source} (set score.input to catalogs/<name> or matched/<run>)")
    props = hats.read_properties(source)
    # Whose id/ra/dec columns the rows have: what the ingest (photoz_catalog) or the crossmatch
    # recorded, so a catalog ingested under any --name scores by name.
    recorded = parts[1] if parts[0] == "catalogs" else (props.get("photoz_crossmatch_left") or cfg["left_catalog"])
    try:
        cat = registry.resolve_catalog(recorded, props)
    except InputError as err:
        raise InputError(f"{cfg['input']}: {err}, so its id column is unknown") from None
    cat_name = cat.name
    names = hats.read_schema(source).names
    allowed = [str(b) for b in (cfg["missing_bands"] or [])]
    unknown = [b for b in allowed if b not in band_set.names]
    require(not unknown, f"score.missing_bands names {', '.join(unknown)}, not bands of the model's band set "
                         f"{band_set.name!r} ({', '.join(band_set.names)})")
    require(len(allowed) < len(band_set), "score.missing_bands may not name every band of the model")
    optional = {c for band in band_set.bands if band.name in allowed for c in (band.flux, band.err)}
    missing_bands = [c for c in band_columns(band_set) if c not in names and c not in optional]
    missing_keys = [c for c in dict.fromkeys((cat.id, cat.ra, cat.dec, hats.HEALPIX_COLUMN)) if c not in names]
    _check_types(cfg["input"], hats.read_schema(source), band_columns(band_set))
    hats.check_data_files(source, cfg["input"], [c for c in band_columns(band_set) if c in names])
    if missing_bands or missing_keys:
        pieces = []
        if missing_bands:
            pieces.append(f"the model's band set {band_set.name!r} ({', '.join(band_set.names)}) needs "
                          f"{', '.join(missing_bands)} (to score without a band the catalog lacks, as unobserved, "
                          "list it in score.missing_bands)")
        if missing_keys:
            pieces.append(f"the {cat_name} id/coordinate columns {', '.join(missing_keys)}")
        raise InputError(f"catalog {cfg['input']} ({source}) lacks columns: " + "; ".join(pieces))
    return ScorePlan(source, name, cat.id, cat.ra, cat.dec,
                     int(props["hats_order"]), tuple(dict.fromkeys((cat.id, cat.ra, cat.dec, hats.HEALPIX_COLUMN))),
                     FLAGS_COLUMN in names)


def _check_types(name: str, schema: pa.Schema, bands: list[str]) -> None:
    """Band columns must be numbers and ``flags`` an integer: one line naming the columns otherwise."""
    wrong = [f"{c} ({schema.field(c).type})" for c in bands if c in schema.names
             and not (pa.types.is_floating(schema.field(c).type) or pa.types.is_integer(schema.field(c).type)
                      or pa.types.is_null(schema.field(c).type))]
    if FLAGS_COLUMN in schema.names and not pa.types.is_integer(schema.field(FLAGS_COLUMN).type):
        wrong.append(f"{FLAGS_COLUMN} ({schema.field(FLAGS_COLUMN).type}, must be an integer)")
    if wrong:
        raise InputError(f"catalog {name}: columns of the wrong type: {', '.join(wrong)}; "
                         "flux and error columns must be numbers (float or integer)")


def mixture_width(meta: dict) -> int:
    """K of the output's fixed-size mixture columns: the network's components x ensemble members."""
    from photoz_spark.registry.artifact import ensemble_members

    return int(meta["model_config"]["n_components"]) * ensemble_members(meta)


def task_profile(spark, runtime: Runtime):
    """The scoring stage's ResourceProfile: a share of a GPU per task (``task_gpus``), or None."""
    conf = spark.sparkContext.getConf()
    amount = task_gpus(runtime.gpus_per_task, runtime.device, spark.sparkContext.master.startswith("local"),
                       float(conf.get("spark.executor.resource.gpu.amount", "0")),
                       conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true")
    if amount is None:
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests().cpus(int(conf.get("spark.task.cpus", "1"))).resource("gpu", amount)
    return ResourceProfileBuilder().require(requests).build


class ListParam(AccumulatorParam):
    """Accumulates lists (the precision checks each worker made)."""

    def zero(self, value):
        return []

    def addInPlace(self, a, b):
        return a + b


FLAG_STAT = "flag_"  # prefix of the per-flag row counts the scoring tasks return


def count_output_flags(batch: pa.RecordBatch) -> dict[str, int]:
    """Rows of a scored batch carrying each flag, counted in the task (the driver reads no output)."""
    return {FLAG_STAT + name: n for name, n in count_flags(batch.column(FLAGS_COLUMN).to_numpy()).items()}


def score_catalog(spark, config: dict, registry: BandCatalog, workdir, files: ModelFiles, band_set,
                  bands_file: str | None = None) -> dict:
    """Score ``score.input`` into ``scores/<name>``. Returns the job summary."""
    from photoz_spark.scoring.kernel import output_schema
    from photoz_spark.staging import job_staging

    t0 = time.time()
    cfg = config["score"]
    p = plan(cfg, registry, workdir, band_set)
    rows_in = int(hats.read_properties(p.source)["hats_nrows"])
    runtime = Runtime.from_config(cfg)
    schema = hats.read_schema(p.source)
    # Bands the catalog does not have at all (score.missing_bands): null columns = not observed.
    absent = tuple(c for c in band_columns(band_set) if c not in schema.names)
    columns = [c for c in dict.fromkeys([*p.keep, *band_columns(band_set), *([FLAGS_COLUMN] if p.has_flags else [])])
               if c not in absent]
    scored_input = pa.schema([schema.field(c) for c in columns] + [pa.field(c, pa.float64()) for c in absent])
    checks = spark.sparkContext.accumulator([], ListParam())
    task = scorer(spark.sparkContext.broadcast(files), p.keep, bands_file, runtime, checks, absent)
    target = Path(workdir.scores) / p.name
    meta = json.loads(files.meta)
    props = {"photoz_model_name": files.name, "photoz_model_version": files.version, "photoz_model_uri": files.uri,
             "photoz_score_input": cfg["input"], "photoz_score_band_set": band_set.name,
             "photoz_absent_bands": ",".join(b.name for b in band_set.bands if b.flux in absent) or "none",
             CALIBRATION_PROPERTY: property_value(meta.get("calibration"))}
    with job_staging(workdir.root, "score") as stage:
        staged = stage.output(p.name, target)
        # Pixel by pixel, input file -> output file: the input is already HEALPix-partitioned.
        written = hats.map_hats(spark, p.source, staged, task, columns=columns,
                                schema=output_schema(scored_input, p.keep, mixture_width(meta)),
                                catalog_name=f"scores_{p.name}",
                                batch_size=int(cfg["batch_size"]), extra_properties=props,
                                count=count_output_flags, profile=task_profile(spark, runtime))
        if written["n_rows"] != rows_in:  # never commit an output that lost or gained rows
            raise RuntimeError(f"scored {written['n_rows']} rows of {rows_in}: output not committed")
        stage.commit()
    seconds = time.time() - t0
    check_results = list(checks.value)
    flagged = {f.name: int(written["stats"].get(FLAG_STAT + f.name, 0)) for f in Flag}
    return {"device": runtime.device, "precision_checks": check_results, "absent_bands": props["photoz_absent_bands"],
            "calibrated": meta.get("calibration") is not None,
            "calibration_method": method_of(meta.get("calibration")),
            "input": str(p.source), "output": str(target), "model_uri": files.uri, "band_set": band_set.name,
            "rows_in": rows_in, "rows_out": written["n_rows"], "partitions": written["n_partitions"],
            "flagged": flagged, "not_scored": flagged[Flag.NOT_SCORED.name],
            "seconds": seconds, "rows_per_s": rows_in / max(seconds, 1e-9)}

