"""Spark orchestration of feature sequencing: matched/<run>/ -> features/<band_set>/.

The executors call ``build.feature_batch`` on each Arrow batch (``mapInArrow``); a second pass
over the cached rows reduces each partition to ``build.batch_summary`` partials, which the
driver combines into the job summary and the training-split statistics. The catalog,
stats.json and layout.json are staged together and committed at the end: a failed run leaves
the previous output untouched, a rerun replaces it.
"""

from __future__ import annotations

import json
import time
from functools import reduce
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from photoz_spark import hats
from photoz_spark.bands import BandCatalog
from photoz_spark.config import require
from photoz_spark.errors import InputError
from photoz_spark.features.build import (
    FeatureSpec,
    batch_summary,
    combine_summaries,
    feature_batch,
    layout,
    output_schema,
)
from photoz_spark.features.catalog import LAYOUT_FILE, STATS_FILE
from photoz_spark.features.extinction import extinction_columns
from photoz_spark.features.split import SPLITS, check_fractions
from photoz_spark.features.stats import CHOICES, stats_from_moments
from photoz_spark.flags import FLAGS_COLUMN
from photoz_spark.staging import job_staging

PROPERTY_PREFIX = "photoz_"


AUTO = "auto"


def feature_spec(cfg: dict, registry: BandCatalog, properties: dict | None = None,
                 schema: pa.Schema | None = None) -> FeatureSpec:
    """The ``features`` settings as a FeatureSpec, refusing values out of range.

    Args:
        cfg: the ``features`` section of the configuration.
        registry: bands (conf/bands.yaml).
        properties: the matched catalog's HATS properties, for settings left ``auto``
            (``auto_columns``).
        schema: the matched catalog's schema: an ``auto`` warning column it lacks is none.

    Raises:
        ValueError: an unknown band set (the message lists the known ones) or catalog, or a
            bad split or redshift limit (ConfigError is a ValueError).
    """
    band_set = registry.band_set(cfg["band_set"])
    left, cfg = auto_columns(cfg, registry, properties or {}, schema)
    split = cfg["split"]
    fractions = check_fractions([split[name] for name in SPLITS])
    require(cfg["z_max"] > 0, f"features.z_max must be > 0, got {cfg['z_max']}")
    require(cfg["representation"] in CHOICES,
            f"features.representation must be one of {', '.join(CHOICES)}, got {cfg['representation']!r}")
    return FeatureSpec(
        band_set=band_set, registry=registry, id_column=cfg["id_column"] or left.id,
        ra_column=left.ra, dec_column=left.dec, z_column=cfg["z_column"],
        zwarning_column=cfg["zwarning_column"], z_max=cfg["z_max"],
        require_zwarning_zero=cfg["require_zwarning_zero"], require_complete=cfg["require_complete"],
        fractions=fractions, seed=split["seed"], deredden=bool(cfg.get("deredden", False)),
    )


def auto_columns(cfg: dict, registry: BandCatalog, properties: dict,
                 schema: pa.Schema | None) -> tuple:
    """The left catalog and the redshift columns, with ``auto`` settings taken from the matched catalog.

    ``features.left_catalog=auto``: the catalog the crossmatch recorded (``photoz_catalog``, else
    ``photoz_crossmatch_left``, else the catalog's own name), through
    ``BandCatalog.resolve_catalog``; for a table without that record, the one catalog of the
    bands file whose id/ra/dec/z columns it has; ``z_column``/``zwarning_column=auto``: that catalog's ``z``
    and ``zwarning`` of the bands file (no warning column if the matched catalog has none).

    Returns:
        (the left Catalog, cfg with those settings resolved).
    """
    if cfg["left_catalog"] == AUTO:
        name = properties.get("photoz_crossmatch_left") or properties.get("obs_collection") or ""
        try:
            left = registry.resolve_catalog(name, properties)
        except InputError as err:
            # A table written without that record: the one catalog whose id/ra/dec/z it has.
            fits = [c for c in registry.catalogs.values() if schema is not None and c.z
                    and {c.id, c.ra, c.dec, c.z} <= set(schema.names)]
            if len(fits) != 1:
                raise InputError(f"features.left_catalog=auto: {err}; set features.left_catalog") from None
            left = fits[0]
    else:
        require(cfg["left_catalog"] in registry.catalogs, f"features.left_catalog: unknown catalog "
                f"{cfg['left_catalog']!r}; known: {', '.join(registry.catalogs)} (or auto)")
        left = registry.catalogs[cfg["left_catalog"]]
    cfg = dict(cfg)
    if cfg["z_column"] == AUTO:
        require(bool(left.z), f"features.z_column=auto: catalog {left.name!r} has no z column in the bands file; "
                              "set features.z_column")
        cfg["z_column"] = left.z
    if cfg["zwarning_column"] == AUTO:
        cfg["zwarning_column"] = left.zwarning if schema is None or left.zwarning in schema.names else ""
    return left, cfg


def input_schema(matched: Path) -> pa.Schema:
    """The schema a HATS catalog records, read without Spark."""
    return pq.read_schema(Path(matched) / hats.DATASET_DIR / "_common_metadata")


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def check_input(schema: pa.Schema, spec: FeatureSpec, where: Path) -> None:
    """Refuse an input that lacks a column the features need, or holds one of the wrong type."""
    def need(column: str, ok, what: str, kind: str) -> None:
        if column not in schema.names:
            raise InputError(f"{where} has no column {column!r} ({what})")
        if not ok(schema.field(column).type):
            raise InputError(f"{where}: column {column!r} ({what}) must be {kind}, is {schema.field(column).type}")

    for band in spec.band_set.bands:
        for column in (band.flux, band.err):
            need(column, _numeric, f"band {band.name} of catalog {band.catalog}", "numeric")
    need(spec.id_column, lambda t: pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t),
         "the id column", "an integer or a string")
    for column, what in ((spec.ra_column, "RA"), (spec.dec_column, "Dec"), (spec.z_column, "redshift"),
                         (spec.zwarning_column, "redshift warning")):
        if column:
            need(column, _numeric, what, "numeric")
    if spec.deredden:
        for column in extinction_columns(spec.band_set, spec.registry):
            need(column, _numeric, "Milky Way extinction, features.deredden=true (the matched catalog must "
                 "carry the right catalogs' extinction columns of conf/bands.yaml)", "numeric")
    need(hats.HEALPIX_COLUMN, pa.types.is_int64, "HEALPix index", "int64")
    if FLAGS_COLUMN in schema.names:
        need(FLAGS_COLUMN, pa.types.is_integer, "quality flags", "an integer")


def validate(cfg: dict, registry: BandCatalog, workdir) -> tuple[FeatureSpec, Path]:
    """Check the settings and the input before any Spark work.

    Args:
        cfg: the ``features`` section of the configuration.
        registry: bands (conf/bands.yaml).
        workdir: a ``cli.Workdir``.

    Returns:
        (spec, path of the matched catalog).

    Raises:
        ValueError: with a one-line message naming what is wrong.
    """
    matched = workdir.matched / cfg["matched"]
    if not (matched / hats.PROPERTIES_FILE).is_file():
        raise InputError(f"matched catalog not found: {matched} (run jobs/crossmatch.py, or set features.matched)")
    schema = input_schema(matched)
    spec = feature_spec(cfg, registry, hats.read_properties(matched), schema)
    check_input(schema, spec, matched)
    # a truncated or retyped pixel file: one line naming it, before Spark. No rows is an answer: an
    # empty features catalog (training refuses it, naming it: no training rows).
    hats.check_data_files(matched)
    return spec, matched


def output_name(cfg: dict) -> str:
    """The features' folder name: ``features.output``, default the band set's name."""
    return cfg.get("output") or cfg["band_set"]


def properties(lay: dict, prefix: str = PROPERTY_PREFIX) -> dict:
    """``layout`` flattened into HATS property keys: {"split": {"seed": 0}} -> photoz_split_seed=0."""
    out = {}
    for key, value in lay.items():
        if isinstance(value, dict):
            out.update(properties(value, f"{prefix}{key}_"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _featurise(spec: FeatureSpec, schema: pa.Schema):
    def run(batches):
        for batch in batches:
            yield feature_batch(batch, spec, schema)
    return run


def _summarise(spec: FeatureSpec):
    def run(batches):
        parts = [batch_summary(batch, spec) for batch in batches]
        if parts:
            yield pa.RecordBatch.from_pydict({"partial": [json.dumps(reduce(combine_summaries, parts))]})
    return run


def _summary(featured, spec: FeatureSpec, schema: pa.Schema) -> dict:
    """Combine the partitions' partial summaries on the driver."""
    partials = [json.loads(row.partial) for row in featured.mapInArrow(_summarise(spec), "partial string").collect()]
    empty = batch_summary(pa.RecordBatch.from_pylist([], schema=schema), spec)
    return reduce(combine_summaries, partials, empty)


def build_features(spark, cfg: dict, registry: BandCatalog, workdir) -> dict:
    """Build ``features/<features.output>/`` (default ``<band_set>``) from ``matched/<cfg.matched>/``.

    Args:
        spark: the SparkSession.
        cfg: the ``features`` section of the configuration (conf/features.yaml).
        registry: bands (conf/bands.yaml).
        workdir: a ``cli.Workdir``.

    Returns:
        Summary: paths, rows in and out, rows per split, excluded rows per reason, observed
        fraction per band, flagged rows per flag, seconds.
    """
    from pyspark import StorageLevel
    from pyspark.sql.pandas.types import from_arrow_schema

    t0 = time.time()
    spec, matched = validate(cfg, registry, workdir)
    in_schema = input_schema(matched)
    schema = output_schema(spec, in_schema)
    wanted = [*spec.input_columns(), FLAGS_COLUMN, hats.HEALPIX_COLUMN]
    source = hats.read_hats(spark, matched).select(*[c for c in wanted if c in in_schema.names])
    rows_in = source.count()
    featured = source.mapInArrow(_featurise(spec, schema), from_arrow_schema(schema))
    featured = featured.persist(StorageLevel.MEMORY_AND_DISK)  # read by the summary and the write
    try:
        summary = _summary(featured, spec, schema)
        stats = {**stats_from_moments(summary["train"], spec.band_set, cfg["representation"]), "split": "train",
                 "n_rows": summary["splits"]["train"]}
        lay = layout(spec, cfg["matched"])
        t_features = time.time() - t0
        name = output_name(cfg)
        target = workdir.features / name
        with job_staging(workdir.root, "features") as stage:
            staged = stage.output(name, target)
            written = hats.write_hats(
                featured, staged, order=int(hats.read_properties(matched)["hats_order"]), ra_col="ra",
                dec_col="dec", catalog_name=f"features_{name}", extra_properties=properties(lay))
            (staged / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
            (staged / LAYOUT_FILE).write_text(json.dumps(lay, indent=1) + "\n")
            stage.commit()
    finally:
        featured.unpersist()
    t_total = time.time() - t0
    observed = np.asarray(summary["observed"]) / max(summary["rows"], 1)
    return {
        "input": str(matched), "output": str(target), "stats": str(target / STATS_FILE),
        "representation": stats["representation"], "faintest_band": stats.get("faintest_band"),
        "band_set": spec.band_set.name, "n_steps": spec.n_steps, "n_values": spec.n_values,
        "rows_in": rows_in, "rows_out": written["n_rows"], "partitions": written["n_partitions"],
        "splits": summary["splits"], "excluded_by_reason": summary["excluded_by_reason"],
        "observed_fraction": dict(zip(spec.band_set.names, observed.tolist(), strict=True)),
        "flagged": summary["flagged"],
        "seconds": {"features": t_features, "write": t_total - t_features, "total": t_total},
    }
