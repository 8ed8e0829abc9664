"""The ingest: validate every input up front, stream chunks to staged Parquet, write HATS with Spark.

1. ``make_plan`` loads the survey map, finds the input files and checks every file's columns,
   types, array widths and units before any row is read (errors name file and column).
2. ``ingest`` runs one Spark task per input file (biggest first): each streams its file in
   chunks of ``ingest.chunk_rows`` rows through the ``ChunkTransformer`` into Parquet files in
   the job's staging folder and reports its rows per HEALPix pixel and its statistics; the
   driver adds up the reports (it reads no row) and chooses the smallest order whose fullest pixel holds at most
   ``ingest.max_rows_per_partition`` rows, and Spark writes ``catalogs/<name>`` with
   ``hats.write_hats``. Nothing reaches ``catalogs/`` unless every step succeeded.

An existing HATS catalog given as input (a folder with ``properties`` and ``dataset/``, e.g.
from hats-import) that already has the pipeline's columns is validated and *linked*:
``catalogs/<name>`` becomes a symbolic link to it, no row is rewritten (``ingest.hats_input=link``,
the default). With ``ingest.hats_input=rewrite``, or to map a HATS catalog in the product's own
columns, its Parquet files are ingested like any Parquet input.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from photoz_spark import hats
from photoz_spark.bands import Registry
from photoz_spark.config import require
from photoz_spark.ingest import IngestError
from photoz_spark.ingest.readers import FORMATS, CatalogReader, SourceColumn, find_inputs, make_reader
from photoz_spark.ingest.survey_map import (
    BandSpec,
    ColumnSpec,
    SourceRef,
    SurveyMap,
    canonical_unit,
    is_magnitude_unit,
    load_survey_map,
)
from photoz_spark.ingest.transform import (
    BAD_COORDS_POLICIES,
    ChunkTransformer,
    IngestStats,
    choose_order,
    output_schema,
)
from photoz_spark.staging import job_staging

MAX_ORDER_LIMIT = 12      # 12 * 4**12 = 201M pixel counters would be 1.6 GB: refuse finer
HATS_INPUT_MODES = ("link", "rewrite")
_POLICY_TEXT = {"keep": "kept, flagged, in pixel 0", "drop": "dropped, not written", "error": "none allowed"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class IngestPlan:
    """Everything the ingest will do, checked before any row is read."""

    name: str
    survey: SurveyMap
    registry: Registry
    input: str
    target: Path
    readers: tuple[CatalogReader, ...] = ()
    resolved: tuple[dict[str, str], ...] = ()   # per reader: map column -> the file's column name
    schema: pa.Schema | None = None
    hats_input: Path | None = None              # set when an existing HATS catalog is linked
    chunk_rows: int = 100_000
    max_rows_per_partition: int = 1_000_000
    max_order: int = 9
    bad_coords: str = "keep"
    check_units: bool = True


# --- validation ------------------------------------------------------------------------------

def make_plan(cfg: dict, registry: Registry, workdir) -> IngestPlan:
    """Check the settings, the survey map and every input file's columns.

    Args:
        cfg: the ``ingest`` section of the configuration (conf/ingest.yaml).
        registry: the bands file's contents.
        workdir: a ``cli.Workdir``; the catalog goes to ``catalogs/<name>``.

    Returns:
        The plan.

    Raises:
        ConfigError / IngestError (both ValueError): a bad setting, map or input; the message
        names the file and column where there is one.
    """
    require(bool(str(cfg["input"]).strip()), "ingest.input is empty: give a file, a glob or a folder (--input)")
    require(bool(str(cfg["survey"]).strip()), "ingest.survey is empty: name a map of conf/surveys/ (--survey)")
    for key in ("chunk_rows", "max_rows_per_partition"):
        require(isinstance(cfg[key], int) and cfg[key] >= 1, f"ingest.{key} must be a positive integer, got {cfg[key]!r}")
    require(isinstance(cfg["max_order"], int) and 0 <= cfg["max_order"] <= MAX_ORDER_LIMIT,
            f"ingest.max_order must be 0..{MAX_ORDER_LIMIT}, got {cfg['max_order']!r}")
    require(cfg["bad_coords"] in BAD_COORDS_POLICIES,
            f"ingest.bad_coords must be one of {BAD_COORDS_POLICIES}, got {cfg['bad_coords']!r}")
    require(cfg["format"] in ("auto", *FORMATS), f"ingest.format must be auto or one of {FORMATS}, got {cfg['format']!r}")
    require(cfg["hats_input"] in HATS_INPUT_MODES,
            f"ingest.hats_input must be one of {HATS_INPUT_MODES}, got {cfg['hats_input']!r}")
    smap = load_survey_map(str(cfg["survey"]), registry)
    if cfg["bands"]:
        smap = smap.with_bands(list(cfg["bands"]))
    smap = smap.renamed(dict(cfg["columns"] or {}))
    name = str(cfg["name"] or smap.catalog.name)
    require(bool(_NAME.fullmatch(name)), f"ingest.name must be a folder name (letters, digits, _ . -), got {name!r}")
    common = {"name": name, "survey": smap, "registry": registry, "input": str(cfg["input"]),
              "target": Path(workdir.catalog(name)), "chunk_rows": cfg["chunk_rows"],
              "max_rows_per_partition": cfg["max_rows_per_partition"], "max_order": cfg["max_order"],
              "bad_coords": cfg["bad_coords"], "check_units": bool(cfg["check_units"])}
    source = Path(str(cfg["input"])).expanduser()
    fmt = cfg["format"]
    if source.is_dir() and (source / hats.PROPERTIES_FILE).is_file():
        if cfg["hats_input"] == "link":
            check_hats_input(source, smap)
            return IngestPlan(**common, hats_input=source.absolute())
        files = sorted(p for p in (source / hats.DATASET_DIR).rglob("*.parquet") if not p.name.startswith((".", "_")))
        if not files:
            raise IngestError(f"{source}: a HATS catalog without data files under {hats.DATASET_DIR}/")
        fmt = "parquet"
    else:
        files = find_inputs(str(cfg["input"]))
    readers = tuple(make_reader(path, fmt, cfg["chunk_rows"], cfg["fits_hdu"]) for path in files)
    resolved = tuple(resolve_columns(smap, reader.describe(), reader.path) for reader in readers)
    # An optional column is written if any file has it (null in the files without it).
    present = {spec.name for spec in smap.columns if spec.source and any(spec.source.column in r for r in resolved)}
    return IngestPlan(**common, readers=readers, resolved=resolved, schema=output_schema(smap, present))


def resolve_columns(smap: SurveyMap, described: dict[str, SourceColumn], path: Path) -> dict[str, str]:
    """Find every column the map reads in a file and check its type, array width and unit.

    Names match exactly, or else case-insensitively (FITS names are case-insensitive: one map
    serves LS sweeps' FLUX_G and tractor files' flux_g).

    Returns:
        map column name -> the file's column name (optional columns the file lacks are left out).

    Raises:
        IngestError: naming the file and the column.
    """
    lower: dict[str, list[str]] = {}
    for name in described:
        lower.setdefault(name.lower(), []).append(name)

    def find(name: str, optional: bool = False) -> SourceColumn | None:
        if name in described:
            return described[name]
        matches = lower.get(name.lower(), [])
        if len(matches) == 1:
            return described[matches[0]]
        if optional:
            return None
        raise IngestError(f"{path}: column {name!r} named by survey map {smap.name!r} is not in the file"
                          f"{' (several differ only in case)' if matches else ''}; columns: {', '.join(described)}")

    resolved: dict[str, str] = {}
    for spec in smap.columns:
        for column in spec.inputs:
            col = find(column)
            _check_ref(path, SourceRef(column), col, "int")
            resolved[column] = col.name
        if spec.source is not None:
            col = find(spec.source.column, spec.optional)
            if col is not None:
                _check_ref(path, spec.source, col, spec.type)
                _check_unit(path, spec, col)
                resolved[spec.source.column] = col.name
    for band in smap.bands:
        for ref, is_flux in ((band.flux, True), (band.err, False)):
            col = find(ref.column)
            _check_ref(path, ref, col, "float")
            _check_band_unit(path, band, ref, col, is_flux)
            resolved[ref.column] = col.name
    return resolved


def _check_ref(path: Path, ref: SourceRef, col: SourceColumn, wanted: str) -> None:
    kind = col.type
    if ref.index is None and col.width is not None:
        raise IngestError(f"{path}: column {col.name!r} is an array of {col.width if col.width >= 0 else 'varying'} "
                          f"elements; name one element in the survey map, e.g. {col.name}[0]")
    if ref.index is not None:
        if col.width is None:
            raise IngestError(f"{path}: column {col.name!r} is not an array, but the survey map reads {ref}")
        if 0 <= col.width <= ref.index:
            raise IngestError(f"{path}: column {col.name!r} has {col.width} elements; the survey map reads {ref}")
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    ok = {"int": pa.types.is_integer(kind) or pa.types.is_boolean(kind), "float": numeric,
          "string": pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)}[wanted]
    if not ok:
        raise IngestError(f"{path}: column {col.name!r} is {kind}; the survey map needs {wanted} ({ref})")


def _check_unit(path: Path, spec: ColumnSpec, col: SourceColumn) -> None:
    if spec.unit and col.unit and not _same_unit(spec.unit, col.unit):
        raise IngestError(f"{path}: column {col.name!r} is in {col.unit!r}; the survey map expects {spec.unit!r}")


def _check_band_unit(path: Path, band: BandSpec, ref: SourceRef, col: SourceColumn, is_flux: bool) -> None:
    """A TUNIT in magnitudes, or a flux unit other than the map's, is an error."""
    if is_magnitude_unit(col.unit):
        raise IngestError(f"{path}: column {col.name!r} (band {band.band.name}) is in {col.unit!r}, magnitudes; "
                          f"the survey map needs {'fluxes' if is_flux else 'flux errors'} in {band.unit}")
    found = canonical_unit(col.unit)
    if is_flux and found is not None and found != band.unit:
        raise IngestError(f"{path}: column {col.name!r} (band {band.band.name}) is in {col.unit!r}; the survey "
                          f"map {ref} says {band.unit}: fix the map's unit or the file")


def _same_unit(a: str, b: str) -> bool:
    """False only for two units astropy knows that differ ('deg' vs 'rad'); unknown spellings pass."""
    ua, ub = _parse_unit(a), _parse_unit(b)
    return ua is None or ub is None or ua == ub


def _parse_unit(text: str):
    import astropy.units as u

    for candidate in (text.strip(), text.strip().lower(), text.strip().lower().rstrip("s")):  # 'DEGREES'
        try:
            return u.Unit(candidate)
        except ValueError:
            continue
    return None


def check_hats_input(path: Path, smap: SurveyMap) -> dict[str, str]:
    """Check that an existing HATS catalog has the columns the pipeline reads, with usable types.

    Returns:
        Its properties.

    Raises:
        IngestError: a missing metadata file, data files or column (with what to do instead).
    """
    try:
        props = hats.read_properties(path)
        schema = hats.read_schema(path)
    except (FileNotFoundError, OSError, pa.ArrowException) as err:
        raise IngestError(f"{path}: not a usable HATS catalog ({err}); ingest its data files with "
                          "ingest.hats_input=rewrite") from None
    if int(props.get("hats_nrows", "1") or 1) > 0 and not any((path / hats.DATASET_DIR).rglob("Npix=*")):
        raise IngestError(f"{path}: no Norder=*/Dir=*/Npix=* data files under {hats.DATASET_DIR}/")
    wanted = [(c.name, c.type) for c in smap.columns if not c.optional]
    wanted += [(n, "float") for b in smap.bands for n in (b.band.flux, b.band.err)]
    wanted += [(hats.HEALPIX_COLUMN, "int64")]
    cat = smap.catalog
    for column, kind in wanted:
        if column not in schema.names:
            raise IngestError(f"{path}: HATS catalog has no column {column!r}, which survey map {smap.name!r} "
                              "writes; set ingest.hats_input=rewrite to map its columns through the survey map")
        t = schema.field(column).type
        ok = {"int": pa.types.is_integer(t), "int64": pa.types.is_int64(t),
              "float": pa.types.is_floating(t) or (pa.types.is_integer(t) and column not in (cat.ra, cat.dec)),
              "string": pa.types.is_string(t) or pa.types.is_large_string(t)}[kind]
        if column == cat.id:
            ok = pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
        if not ok:
            raise IngestError(f"{path}: column {column!r} is {t}, the pipeline needs {kind}")
    return props


# --- the run ---------------------------------------------------------------------------------

def ingest(spark, plan: IngestPlan, workdir) -> dict:
    """Run a plan: write (or link) ``catalogs/<name>``.

    Args:
        spark: the SparkSession.
        plan: from ``make_plan``.
        workdir: the ``cli.Workdir`` (its root holds the job's staging folder).

    Returns:
        Summary: input, files, rows read/written, bad coordinates kept/dropped, values out of
        range per column, order, partitions, largest partition, output path, seconds, rows/s.
    """
    t0 = time.time()
    if plan.hats_input is not None:
        return _link(spark, plan, t0)
    with job_staging(workdir.root, "ingest") as stage:
        chunks = stage.path / "chunks"
        chunks.mkdir()
        stats, counts = _read_files(spark, plan, chunks)
        if not any(chunks.iterdir()):  # Spark needs one file to know the schema
            pq.write_table(plan.schema.empty_table(), chunks / "part-empty.parquet")
        t_read = time.time()
        order, largest = choose_order(counts, plan.max_order, plan.max_rows_per_partition)
        cat = plan.survey.catalog
        written = hats.write_hats(
            spark.read.parquet(str(chunks)), stage.output(plan.name, plan.target), order=order,
            ra_col=cat.ra, dec_col=cat.dec, catalog_name=plan.name,
            extra_properties={**catalog_properties(plan.survey), "photoz_ingest_survey": plan.survey.name,
                              "photoz_ingest_files": len(plan.readers),
                              "photoz_ingest_bad_coords": stats.bad_coords, "photoz_ingest_dropped": stats.dropped})
        if plan.target.is_symlink():  # an earlier linked catalog: replace the link, not its target
            plan.target.unlink()
        stage.commit()
    seconds = time.time() - t0
    return {"mode": "ingest", "name": plan.name, "survey": plan.survey.name, "input": plan.input,
            "files": [str(r.path) for r in plan.readers], "rows_read": stats.rows_read,
            "rows_written": written["n_rows"], "bad_coords": stats.bad_coords, "dropped": stats.dropped,
            "bad_coords_policy": _POLICY_TEXT[plan.bad_coords], "out_of_range": dict(stats.out_of_range), "order": order,
            "partitions": written["n_partitions"], "largest_partition": largest,
            "max_rows_per_partition": plan.max_rows_per_partition, "path": str(plan.target),
            "columns": plan.schema.names,
            "seconds": {"read": t_read - t0, "write": seconds - (t_read - t0), "total": seconds},
            "rows_per_s": stats.rows_read / seconds if seconds > 0 else 0.0}


# One input file's report: its rows per pixel at max_order, its statistics (JSON) or its error.
_FILE_REPORT = pa.schema([("file", pa.int32()), ("pixels", pa.list_(pa.int64())), ("counts", pa.list_(pa.int64())),
                          ("stats", pa.string()), ("error", pa.string())])
_FILE_REPORT_DDL = "file int, pixels array<long>, counts array<long>, stats string, error string"


def _read_files(spark, plan: IngestPlan, chunks: Path) -> tuple[IngestStats, np.ndarray]:
    """Transform every input file into Parquet chunks under ``chunks``: one Spark task per file.

    Each task streams its file in chunks through the ``ChunkTransformer`` and reports its rows
    per pixel at ``max_order`` and its statistics; the driver only adds the reports up (and
    picks the order from them), it reads no row. A data error found in a file (IngestError)
    comes back as the task's report and is raised here with its one-line message; the first
    file's, in input order.

    Returns:
        (the statistics over all files, rows per pixel at ``plan.max_order``).
    """
    stats = IngestStats()
    counts = np.zeros(12 * 4**plan.max_order, dtype=np.int64)
    if not plan.readers:
        return stats, counts
    sizes = [r.path.stat().st_size if r.path.is_file() else 0 for r in plan.readers]
    files = sorted(range(len(plan.readers)), key=lambda i: -sizes[i])  # biggest first
    tasks = spark.sparkContext.parallelize([(i,) for i in files], len(files)).toDF("file int")
    reports = tasks.mapInArrow(_file_task(plan, str(chunks)), _FILE_REPORT_DDL).collect()
    errors = sorted((r.file, r.error) for r in reports if r.error)
    if errors:
        raise IngestError(errors[0][1])
    for report in reports:
        counts[np.asarray(report.pixels, dtype=np.int64)] += np.asarray(report.counts, dtype=np.int64)
        totals = json.loads(report.stats)
        for key in ("rows_read", "rows_kept", "bad_coords", "dropped"):
            setattr(stats, key, getattr(stats, key) + totals[key])
        for column, n in totals["out_of_range"].items():
            stats.out_of_range[column] = stats.out_of_range.get(column, 0) + n
    return stats, counts


def _file_task(plan: IngestPlan, chunks: str):
    """The ``mapInArrow`` function of ``_read_files``: ingest the listed files, report each."""

    def run(tasks):
        for task in tasks:
            for i in task.column("file").to_pylist():
                yield _ingest_file(plan, i, Path(chunks))

    return run


def _ingest_file(plan: IngestPlan, i: int, chunks: Path) -> pa.RecordBatch:
    """Stream input file ``i`` into chunk files; its report (``_FILE_REPORT``)."""
    reader, resolved = plan.readers[i], plan.resolved[i]
    stats = IngestStats()
    shift = 2 * (hats.HEALPIX_ORDER - plan.max_order)
    pixels: list[np.ndarray] = []
    try:
        transform = ChunkTransformer(plan.survey, plan.registry, resolved, plan.schema,
                                     plan.bad_coords, plan.check_units, stats)
        hints = {resolved[c]: pa.float64() for c in _float_sources(plan.survey) if c in resolved}
        row = 0
        for n_chunk, batch in enumerate(reader.batches(sorted(set(resolved.values())), hints)):
            out, h29 = transform(batch, f"{reader.path} rows {row}..{row + batch.num_rows - 1}")
            row += batch.num_rows
            pixels.append(h29 >> shift)
            final = chunks / f"part-{i:05d}-{n_chunk:07d}.parquet"
            # A hidden name until complete: a retried task never leaves a half file for Spark to read.
            tmp = chunks / f".{final.name}.{uuid.uuid4().hex}.tmp"
            pq.write_table(pa.Table.from_batches([out], schema=plan.schema), tmp)
            os.replace(tmp, final)
    except IngestError as err:
        return pa.RecordBatch.from_pylist([{"file": i, "pixels": [], "counts": [], "stats": "{}", "error": str(err)}],
                                          schema=_FILE_REPORT)
    found, n = np.unique(np.concatenate(pixels), return_counts=True) if pixels else ([], [])
    totals = {"rows_read": stats.rows_read, "rows_kept": stats.rows_kept, "bad_coords": stats.bad_coords,
              "dropped": stats.dropped, "out_of_range": dict(stats.out_of_range)}
    return pa.RecordBatch.from_pylist([{"file": i, "pixels": list(map(int, found)), "counts": list(map(int, n)),
                                        "stats": json.dumps(totals), "error": None}], schema=_FILE_REPORT)


def _float_sources(smap: SurveyMap) -> list[str]:
    """Product columns read as floats: CSV type inference must not guess int from a first block."""
    cols = [c.source.column for c in smap.columns if c.source and c.type == "float"]
    return cols + [r.column for b in smap.bands for r in (b.flux, b.err) if r.index is None]


def catalog_properties(smap: SurveyMap) -> dict:
    """What the catalog is, for every later job (``BandCatalog.resolve_catalog``/``bands_of``).

    ``photoz_catalog``: the bands file's catalog whose id/ra/dec (and z) columns it has, so a
    catalog written under any ``--name`` is still found; ``photoz_bands``: the bands it holds.
    """
    return {"photoz_catalog": smap.catalog.name, "photoz_bands": [b.band.name for b in smap.bands] or "none"}


def _link(spark, plan: IngestPlan, t0: float) -> dict:
    """Register an existing HATS catalog under ``catalogs/<name>`` as a symbolic link."""
    from pyspark.sql import functions as F

    cat = plan.survey.catalog
    props = hats.read_properties(plan.hats_input)
    df = hats.read_hats(spark, plan.hats_input).select(cat.ra, cat.dec)
    ra, dec = F.col(cat.ra), F.col(cat.dec)
    good = (ra.isNotNull() & dec.isNotNull() & ~F.isnan(ra) & ~F.isnan(dec) & (ra >= 0.0) & (ra < 360.0)
            & (dec >= -90.0) & (dec <= 90.0))
    row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(F.when(good, 0).otherwise(1)).alias("bad")).first()
    rows, bad = int(row["n"]), int(row["bad"] or 0)
    if plan.target.absolute() != plan.hats_input.absolute():
        link_catalog(plan.hats_input, plan.target)
    seconds = time.time() - t0
    # hats-import partitions adaptively (several Norder=); hats_order, where written, is the finest.
    orders = [int(p.name.split("=")[1]) for p in (plan.hats_input / hats.DATASET_DIR).glob("Norder=*")]
    order = int(props["hats_order"]) if str(props.get("hats_order", "")).isdigit() else max(orders, default=0)
    n_files = sum(1 for _ in (plan.hats_input / hats.DATASET_DIR).rglob("Npix=*"))
    return {"mode": "linked", "name": plan.name, "survey": plan.survey.name, "input": plan.input,
            "files": [str(plan.hats_input)], "rows_read": rows, "rows_written": 0, "bad_coords": bad,
            "dropped": 0, "bad_coords_policy": "reported (a linked catalog is not rewritten)", "out_of_range": {},
            "order": order, "partitions": n_files, "largest_partition": int(props.get("hats_max_rows", 0) or 0),
            "max_rows_per_partition": plan.max_rows_per_partition, "path": str(plan.target),
            "columns": hats.read_schema(plan.hats_input).names,
            "seconds": {"read": seconds, "write": 0.0, "total": seconds},
            "rows_per_s": rows / seconds if seconds > 0 else 0.0}


def link_catalog(source: Path, target: Path) -> None:
    """Make ``target`` a symbolic link to the catalog ``source``, replacing an earlier catalog or link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.link-{uuid.uuid4().hex}")
    tmp.symlink_to(source.absolute(), target_is_directory=True)
    try:
        if target.is_symlink() or not target.exists():
            os.replace(tmp, target)  # atomic for a link or nothing
            return
        if not (target / hats.PROPERTIES_FILE).is_file() and any(target.iterdir()):
            raise IngestError(f"{target} exists and is not a HATS catalog; refusing to replace it")
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        target.rename(old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
