"""HATS-like HEALPix-partitioned Parquet catalogs, the layout that LSDB and ``hats`` read.

A catalog written here looks like this::

    <catalog>/properties                       key=value metadata (obs_collection, hats_nrows, ...)
    <catalog>/partition_info.csv               Norder,Npix of every data file
    <catalog>/dataset/_common_metadata         the Parquet schema
    <catalog>/dataset/_metadata                the schema plus every file's row groups
    <catalog>/dataset/Norder=k/Dir=d/Npix=n.parquet

All data files use one HEALPix order k (no adaptive splitting), ``Dir = (n // 10000) * 10000``,
and every file has an int64 ``_healpix_29`` column (nested index at order 29) by which its rows
are sorted. A pixel's rows are always in exactly one file.

Writes are all-or-nothing: files go to a hidden staging folder beside the target, which is
renamed into place only once complete, replacing any earlier catalog there. The target's
filesystem must be visible to the driver and to every executor (local disk for ``local[*]``,
a shared filesystem on a cluster).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from photoz_spark import __version__, faults
from photoz_spark.commit import unique_name
from photoz_spark.errors import InputError

HEALPIX_COLUMN = "_healpix_29"
HEALPIX_ORDER = 29
PROPERTIES_FILE = "properties"
PARTITION_INFO_FILE = "partition_info.csv"
DATASET_DIR = "dataset"
COLUMNS_KEY = "photoz_columns"
# Rows per Parquet row group: 10^5-10^6 keeps footers small (~3 kB per row group) and reads long.
ROW_GROUP_ROWS = 262_144
# ``dataset/_metadata`` (every row group's statistics, built on the driver) only up to this many
# row groups (~30 MB); bigger catalogs get ``_common_metadata`` only, as hats-import allows.
METADATA_MAX_ROW_GROUPS = 10_000
# A write task's report: one row per file it wrote, and a totals row (Npix -1) with its statistics.
_TASK_SCHEMA = pa.schema([("Npix", pa.int64()), ("n_rows", pa.int64()), ("n_bytes", pa.int64()),
                          ("n_row_groups", pa.int64()), ("stats", pa.string())])
_TASK_DDL = "Npix long, n_rows long, n_bytes long, n_row_groups long, stats string"  # the same, for Spark


# --- HEALPix indices -------------------------------------------------------------------------

def healpix29(ra_deg, dec_deg) -> np.ndarray:
    """Nested HEALPix index at order 29 of sky positions.

    Args:
        ra_deg: right ascension in degrees (any range; it wraps).
        dec_deg: declination in degrees, within [-90, 90].

    Returns:
        int64 array of order-29 nested pixel indices.

    Raises:
        ValueError: for a non-finite coordinate (healpy would return a plausible garbage index).
    """
    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise ValueError("healpix29: RA and Dec must all be finite")
    import healpy as hp  # here: healpy's import (matplotlib, astropy: ~1.4 CPU s) is not every worker's

    return np.asarray(hp.ang2pix(2**HEALPIX_ORDER, ra, dec, nest=True, lonlat=True), dtype=np.int64)


def pixel_at_order(h29, order: int):
    """The nested pixel at a lower order that contains each order-29 pixel.

    Args:
        h29: order-29 nested indices (int or int64 array).
        order: the target order, 0..29.

    Returns:
        The order-``order`` nested indices, same shape as ``h29``.
    """
    _check_order(order)
    # Nested indices share prefixes: dropping two bits per order walks up the pixel tree.
    return np.asarray(h29, dtype=np.int64) >> (2 * (HEALPIX_ORDER - order))


def _check_order(order: int) -> None:
    if not isinstance(order, (int, np.integer)) or not 0 <= order <= HEALPIX_ORDER:
        raise ValueError(f"HEALPix order must be an integer in 0..{HEALPIX_ORDER}, got {order!r}")


# --- layout ----------------------------------------------------------------------------------

def pixel_relpath(order: int, npix: int) -> str:
    """A data file's path relative to ``<catalog>/dataset``.

    Args:
        order: HEALPix order of the partition.
        npix: nested pixel index at that order.

    Returns:
        ``Norder=k/Dir=d/Npix=n.parquet``.
    """
    return f"Norder={order}/Dir={(npix // 10_000) * 10_000}/Npix={npix}.parquet"


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns a pixel file dictionary-encodes: all but floats and 64-bit integers.

    Measurements, coordinates, identifiers and ``_healpix_29`` hardly ever repeat: Parquet would
    hash every value of a pixel file into a dictionary (kept below ~1 MB of values, i.e. for most
    pixel files) for nothing. Without it a crossmatch output file is written with ~4x less CPU
    and is ~25 % smaller (bench/RESULTS.md); flags, counts and strings keep their dictionaries.
    """
    return [f.name for f in schema
            if not (pa.types.is_floating(f.type) or (pa.types.is_integer(f.type) and f.type.bit_width == 64))]


class _PixelFileWriter:
    """Writes batches sorted by ``_healpix_29`` into one Parquet file per pixel.

    Rows arrive in index order, so each pixel is one contiguous run: a file is opened when the
    run starts and closed when it ends. Batches are gathered into row groups of
    ``ROW_GROUP_ROWS`` (small upstream batches would otherwise make thousands of tiny row groups,
    each ~3 kB of footer), so memory stays at one row group whatever the data size.
    """

    def __init__(self, dataset_dir: str | Path, order: int, row_group_rows: int | None = None):
        self.dataset_dir = Path(dataset_dir)
        self.order = order
        self.row_group_rows = row_group_rows or ROW_GROUP_ROWS
        self.counts: dict[int, int] = {}
        self.n_bytes = 0
        self.n_row_groups = 0
        self._npix: int | None = None
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Append a batch, splitting it at pixel boundaries."""
        npix = self._pixels(batch)
        bounds = [0, *(np.flatnonzero(np.diff(npix)) + 1), len(npix)]
        for lo, hi in itertools.pairwise(bounds):
            if hi > lo:
                self._switch_to(int(npix[lo]), batch.schema)
                self._pending.append(batch.slice(lo, hi - lo))
                self._pending_rows += hi - lo
                self.counts[self._npix] += hi - lo
                if self._pending_rows >= self.row_group_rows:
                    self._flush()

    def close(self) -> dict[int, int]:
        """Finish the open file; returns Npix -> rows written."""
        self._finish()
        return self.counts

    def _pixels(self, batch: pa.RecordBatch) -> np.ndarray:
        column = batch.column(HEALPIX_COLUMN)
        if column.null_count:
            raise ValueError(f"{HEALPIX_COLUMN} has null values")
        h29 = column.to_numpy()
        if len(h29) and h29.min() < 0:
            raise ValueError(f"{HEALPIX_COLUMN} has negative values")
        return pixel_at_order(h29, self.order)

    def _switch_to(self, npix: int, schema: pa.Schema) -> None:
        if npix == self._npix:
            return
        self._finish()
        if npix in self.counts:
            raise ValueError(f"rows of pixel {npix} are not contiguous: input is not sorted by {HEALPIX_COLUMN}")
        final = self.dataset_dir / pixel_relpath(self.order, npix)
        # Only the Dir= level is created here (Norder= comes from the driver): a task still
        # running after a failed write was cleaned up must not recreate the staging folder.
        final.parent.mkdir(exist_ok=True)
        # A hidden temporary name: a retried or killed Spark task never leaves a half file that
        # readers (which skip dot-files) would see.
        self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        self._writer = pq.ParquetWriter(self._tmp, schema, use_dictionary=dictionary_columns(schema))
        self._npix, self.counts[npix] = npix, 0

    def _flush(self) -> None:
        if self._pending_rows:
            self._writer.write_table(pa.Table.from_batches(self._pending), row_group_size=self._pending_rows)
            self.n_row_groups += 1
            faults.point("hats.pixel_file")  # tests: a task killed with a pixel file half written
        self._pending, self._pending_rows = [], 0

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        final = self.dataset_dir / pixel_relpath(self.order, self._npix)
        os.replace(self._tmp, final)
        self.n_bytes += final.stat().st_size
        self._writer = self._tmp = None


def _write_pixel_files(batches: Iterable[pa.RecordBatch], dataset_dir: str | Path,
                       order: int) -> _PixelFileWriter:
    """Write index-sorted batches as one file per pixel; returns the closed writer (counts, bytes)."""
    writer = _PixelFileWriter(dataset_dir, order)
    for batch in batches:
        writer.write(batch)
    writer.close()
    return writer


@dataclass
class _Written:
    """What the tasks wrote, as they report it: the driver never re-reads the data files."""

    counts: dict[int, int]  # Npix -> rows
    n_bytes: int = 0
    n_row_groups: int = 0
    stats: dict = field(default_factory=dict)  # task statistics, summed

    @classmethod
    def of(cls, writer: _PixelFileWriter) -> _Written:
        return cls(dict(writer.counts), writer.n_bytes, writer.n_row_groups)


def _task_report(writer: _PixelFileWriter, stats: dict | None = None) -> pa.RecordBatch:
    """A task's answer: one (Npix, n_rows) row per file it wrote and a totals row (Npix -1)."""
    pixels = list(writer.counts)
    return pa.RecordBatch.from_pydict({
        "Npix": [*pixels, -1], "n_rows": [*writer.counts.values(), 0],
        "n_bytes": [0] * len(pixels) + [writer.n_bytes], "n_row_groups": [0] * len(pixels) + [writer.n_row_groups],
        "stats": [""] * len(pixels) + [json.dumps(stats or {})]}, schema=_TASK_SCHEMA)


def _collect_reports(rows) -> _Written:
    """Sum the tasks' reports; a pixel reported twice would mean two files for it: never commit that."""
    written = _Written({})
    for row in rows:  # Spark Rows or dicts (map_pixels' RDD): both index by name
        npix = row["Npix"]
        if npix < 0:
            written.n_bytes += row["n_bytes"]
            written.n_row_groups += row["n_row_groups"]
            for key, value in json.loads(row["stats"]).items():
                written.stats[key] = written.stats.get(key, 0) + value
        elif npix in written.counts:
            raise RuntimeError(f"pixel {npix} was written by two tasks")
        else:
            written.counts[npix] = row["n_rows"]
    return written


# --- catalog-level metadata ------------------------------------------------------------------

def _write_parquet_metadata(dataset_dir: Path, order: int, pixels: list[int], fallback_schema: pa.Schema,
                            with_row_groups: bool) -> None:
    """Write ``_common_metadata`` (schema) and, if asked, ``_metadata`` (schema + all row groups)."""
    schema = pq.read_schema(dataset_dir / pixel_relpath(order, pixels[0])) if pixels else fallback_schema
    dataset_dir.mkdir(parents=True, exist_ok=True)
    pq.write_metadata(schema, dataset_dir / "_common_metadata")
    if not with_row_groups:
        return
    collected = []
    for npix in pixels:  # sorted: HATS lists row groups in pixel order
        meta = pq.read_metadata(dataset_dir / pixel_relpath(order, npix))
        meta.set_file_path(pixel_relpath(order, npix))
        collected.append(meta)
    pq.write_metadata(schema, dataset_dir / "_metadata", metadata_collector=collected)


def _write_partition_info(catalog_dir: Path, order: int, pixels: list[int]) -> None:
    lines = ["Norder,Npix", *(f"{order},{npix}" for npix in pixels)]
    (catalog_dir / PARTITION_INFO_FILE).write_text("\n".join(lines) + "\n")


def _property_value(key: str, value) -> str:
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)  # HATS writes lists space-delimited
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"property {key!r}: values must be one line")
    return text


def _properties(*, catalog_name: str, order: int, ra_col: str, dec_col: str,
                counts: dict[int, int], columns: list[str], extra: dict | None, size_kib: int) -> dict[str, str]:
    """The ``properties`` key/values, HATS v1.0 names plus ``photoz_columns`` and ``extra``."""
    n_pixels = 12 * 4**order
    props = {
        "obs_collection": catalog_name,
        "dataproduct_type": "object",
        "hats_nrows": sum(counts.values()),
        "hats_col_ra": ra_col,
        "hats_col_dec": dec_col,
        "hats_col_healpix": HEALPIX_COLUMN,
        "hats_col_healpix_order": HEALPIX_ORDER,
        "hats_npix_suffix": ".parquet",
        "hats_order": order,
        "hats_max_rows": max(counts.values(), default=0),
        "moc_sky_fraction": f"{len(counts) / n_pixels:0.5f}",
        "hats_builder": f"photoz-spark v{__version__}",
        "hats_creation_date": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M%Z"),
        "hats_estsize": size_kib,
        "hats_release_date": "2025-08-22",
        "hats_version": "v1.0",
        COLUMNS_KEY: ",".join(columns),
    }
    clash = sorted(set(extra or {}) & set(props))
    if clash:
        raise ValueError(f"extra_properties may not set computed properties: {', '.join(clash)}")
    return {key: _property_value(key, value) for key, value in {**props, **(extra or {})}.items()}


def _write_properties(catalog_dir: Path, props: dict[str, str]) -> None:
    for key in props:
        if not key or any(c in key for c in " \t=:#!\n"):
            raise ValueError(f"invalid property key {key!r}")
    lines = ["#HATS catalog", *(f"{k}={v}" for k, v in props.items())]
    (catalog_dir / PROPERTIES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- staging and commit ----------------------------------------------------------------------

def _is_catalog(path: Path) -> bool:
    return (path / PROPERTIES_FILE).is_file() and (path / DATASET_DIR).is_dir()


def _check_target(target: Path) -> None:
    """Refuse to replace something that is not an earlier catalog (or an empty folder)."""
    if target.exists() and not _is_catalog(target) and not (target.is_dir() and not any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not a HATS catalog; refusing to replace it")


def _commit(staging: Path, target: Path) -> None:
    """Put the finished staging folder at ``target``, replacing any earlier catalog."""
    old = None
    if target.exists():
        old = target.with_name(unique_name(f".{target.name}.old"))  # owner-named: commit.recover restores it
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)  # put the earlier catalog back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_columns(columns: list[str], h29_type: str | None, *, ra_col: str, dec_col: str,
                   order: int) -> None:
    """Refuse a bad order, missing columns or a ``_healpix_29`` that is not int64, before writing."""
    _check_order(order)
    missing = [c for c in (ra_col, dec_col, HEALPIX_COLUMN) if c not in columns]
    if missing:
        raise ValueError(
            f"columns {missing} not found (have: {', '.join(columns)}); "
            f"add {HEALPIX_COLUMN} with photoz_spark.hats.healpix29(ra, dec)"
        )
    if h29_type not in ("int64", "bigint"):
        raise ValueError(f"{HEALPIX_COLUMN} must be int64 (Spark: bigint), got {h29_type}")


def _write_catalog(path, write_pixels: Callable[[Path], _Written], *, order: int,
                   ra_col: str, dec_col: str, catalog_name: str, extra_properties: dict | None,
                   columns: list[str], fallback_schema: pa.Schema) -> dict:
    """Stage a catalog with ``write_pixels`` and the driver-side metadata, then commit it.

    Args:
        path: the catalog folder to create or replace.
        write_pixels: writes the data files under the given dataset folder; returns what it wrote.
        order, ra_col, dec_col, catalog_name, extra_properties: see ``write_hats``.
        columns: the data files' column names, in order.
        fallback_schema: the schema to record when there are no rows.

    Returns:
        Summary dict: path, n_rows, n_partitions, order, n_row_groups, stats (the tasks' statistics
        summed; empty unless the writer reports some).
    """
    target = Path(path).absolute()
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the final rename stays on one filesystem and is atomic.
    staging = target.with_name(unique_name(f".{target.name}.staging"))  # commit.recover removes a dead one
    try:
        (staging / DATASET_DIR / f"Norder={order}").mkdir(parents=True)
        written = write_pixels(staging / DATASET_DIR)
        faults.point("hats.catalog")  # tests: killed with the data files written, the metadata not
        for leftover in (staging / DATASET_DIR).rglob(".*.tmp"):
            leftover.unlink()  # a failed task attempt's half file (Spark retried the task elsewhere)
        counts = written.counts
        pixels = sorted(counts)
        # The row-group index is ~3 kB per row group, read from every footer by the driver: only
        # below a cap (hats-import also leaves it out of big catalogs); readers do without it.
        _write_parquet_metadata(staging / DATASET_DIR, order, pixels, fallback_schema,
                                with_row_groups=written.n_row_groups <= METADATA_MAX_ROW_GROUPS)
        _write_partition_info(staging, order, pixels)
        props = _properties(catalog_name=catalog_name, order=order, ra_col=ra_col,
                            dec_col=dec_col, counts=counts, columns=columns, extra=extra_properties,
                            size_kib=written.n_bytes // 1024)
        _write_properties(staging, props)
        _commit(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"path": str(target), "n_rows": sum(counts.values()), "n_partitions": len(pixels), "order": order,
            "n_row_groups": written.n_row_groups, "stats": written.stats}


# --- public writers and readers --------------------------------------------------------------

def write_hats_table(table: pa.Table, path, *, order: int, ra_col: str, dec_col: str,
                     catalog_name: str, extra_properties: dict | None = None) -> dict:
    """Write an in-memory Arrow table as a HATS catalog (no Spark).

    Args:
        table: rows with an int64 ``_healpix_29`` column.
        path: the catalog folder; an earlier catalog there is replaced.
        order: HEALPix order of the partitions.
        ra_col: RA column name, recorded as ``hats_col_ra``.
        dec_col: Dec column name, recorded as ``hats_col_dec``.
        catalog_name: recorded as ``obs_collection``.
        extra_properties: more ``properties`` keys (may not override computed ones).

    Returns:
        Summary dict: path, n_rows, n_partitions, order, n_row_groups.
    """
    h29_type = str(table.schema.field(HEALPIX_COLUMN).type) if HEALPIX_COLUMN in table.column_names else None
    _check_columns(table.column_names, h29_type, ra_col=ra_col, dec_col=dec_col, order=order)
    ordered = table.sort_by(HEALPIX_COLUMN)
    return _write_catalog(
        path, lambda dataset_dir: _Written.of(_write_pixel_files(ordered.to_batches(), dataset_dir, order)),
        order=order, ra_col=ra_col, dec_col=dec_col, catalog_name=catalog_name,
        extra_properties=extra_properties, columns=table.column_names, fallback_schema=table.schema,
    )


def _executor_writer(dataset_dir: str, order: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator]:
    """The ``mapInArrow`` function: write a partition's pixels, yield its report (``_task_report``)."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield _task_report(_write_pixel_files(batches, dataset_dir, order))

    return write


def write_parallelism(df) -> int:
    """How many tasks ``write_hats`` writes with: from the data and the cluster, never a fixed number.

    The input's own partitions are sized from its bytes (Spark's file sources cut ~128 MB splits;
    generated frames choose theirs from their rows), so keeping at least that many tasks keeps
    each task's share of rows bounded as the catalog grows; at least two per core keeps every
    core busy while the biggest pixels finish.

    Args:
        df: the DataFrame to write.

    Returns:
        The number of write tasks (>= 1).
    """
    cores = df.sparkSession.sparkContext.defaultParallelism
    return max(2 * cores, df.rdd.getNumPartitions(), 1)


def _spark_pixel_writer(df, order: int) -> Callable[[Path], _Written]:
    """Partition ``df`` by pixel and write its files from the executors."""
    from pyspark.sql import functions as F

    def write_pixels(dataset_dir: Path) -> _Written:
        npix = F.shiftright(F.col(HEALPIX_COLUMN), 2 * (HEALPIX_ORDER - order))
        # Hash-partitioning on the pixel puts all of a pixel's rows in one task; sorting by the
        # index inside the task makes each pixel one contiguous run (one file, streamed).
        ordered = df.repartition(write_parallelism(df), npix).sortWithinPartitions(HEALPIX_COLUMN)
        return _collect_reports(ordered.mapInArrow(_executor_writer(str(dataset_dir), order), _TASK_DDL).collect())

    return write_pixels


def write_hats(df, path, *, order: int, ra_col: str, dec_col: str, catalog_name: str,
               extra_properties: dict | None = None) -> dict:
    """Write a Spark DataFrame as a HATS catalog, one file per non-empty pixel, from the executors.

    The number of write tasks follows the data and the cluster (``write_parallelism``); each
    task reports its files' rows and bytes, so the driver reads no data file back (``_metadata``
    only below ``METADATA_MAX_ROW_GROUPS``).

    Args:
        df: a Spark DataFrame with a long ``_healpix_29`` column.
        path: the catalog folder; an earlier catalog there is replaced only once the new one is
            complete, and left untouched if the write fails.
        order: HEALPix order of the partitions.
        ra_col: RA column name, recorded as ``hats_col_ra``.
        dec_col: Dec column name, recorded as ``hats_col_dec``.
        catalog_name: recorded as ``obs_collection``.
        extra_properties: more ``properties`` keys (may not override computed ones).

    Returns:
        Summary dict: path, n_rows, n_partitions, order, n_row_groups, stats.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    _check_columns(df.columns, dict(df.dtypes).get(HEALPIX_COLUMN), ra_col=ra_col, dec_col=dec_col, order=order)
    return _write_catalog(
        path, _spark_pixel_writer(df, order),
        order=order, ra_col=ra_col, dec_col=dec_col, catalog_name=catalog_name,
        extra_properties=extra_properties, columns=df.columns, fallback_schema=to_arrow_schema(df.schema),
    )


def partition_pixels(path) -> tuple[int, np.ndarray]:
    """A catalog's partition order and its pixels (sorted), from ``partition_info.csv``.

    Args:
        path: the catalog folder.

    Returns:
        (hats_order, int64 array of Npix).
    """
    catalog = _require_catalog(path)
    order = int(read_properties(catalog)["hats_order"])
    npixs = [int(line.split(",")[1]) for line in (catalog / PARTITION_INFO_FILE).read_text().split()[1:]]
    return order, np.array(sorted(npixs), dtype=np.int64)


def _tasks(catalog: Path, group_order: int) -> list[tuple[int, str]]:
    """The tasks of ``map_pixels``: (group pixel, JSON list of [Npix, file]), biggest first.

    A task is all source pixels inside one pixel at ``group_order`` (one source pixel when that is
    the source's order), so that each output file is written by one task.
    """
    order, npixs = partition_pixels(catalog)
    shift = 2 * max(0, order - group_order)
    groups: dict[int, list[list]] = {}
    for npix in npixs.tolist():
        groups.setdefault(npix >> shift, []).append([npix, pixel_relpath(order, npix)])

    def size(files):
        return sum((catalog / DATASET_DIR / f).stat().st_size for _, f in files)

    ordered = sorted(groups.items(), key=lambda item: -size(item[1]))
    return [(key, json.dumps(files)) for key, files in ordered]


def _executor_pixel_mapper(source_dataset: str, dataset_dir: str, source_order: int, out_order: int,
                           process) -> Callable[[Iterator[tuple[int, str]]], Iterator[dict]]:
    """The partition function of ``map_pixels``: each task's source pixels into its output files.

    Gets the partition's (Npix, files) tasks of ``_tasks``' list (``task_rdd`` turns the
    partition's index into them) and yields the report rows (``_task_report``) as dicts.
    """

    def run(tasks: Iterator[tuple[int, str]]) -> Iterator[dict]:
        for _, files in tasks:
            writer, stats = _PixelFileWriter(dataset_dir, out_order), {}
            for npix, relpath in json.loads(files):
                before = set(writer.counts)
                for batch in process(npix, str(Path(source_dataset) / relpath), stats):
                    writer.write(batch)
                moved = [p for p in set(writer.counts) - before
                         if not pixels_overlap(p, out_order, npix, source_order)]
                if moved:  # another task may be writing that pixel: never commit it
                    writer.close()
                    raise ValueError(f"the mapped rows of pixel {npix} fall in pixels {sorted(moved)}: "
                                     f"map_hats functions must keep {HEALPIX_COLUMN}")
            writer.close()
            yield from _task_report(writer, stats).to_pylist()

    return run


def task_rdd(spark, tasks: list, mapper):
    """A Python RDD with one partition per task whose partition function gets its task.

    Only the indices ``range(len(tasks))`` are shipped; each partition's index becomes its
    task from the list in the closure, and ``mapper`` (tasks iterator -> rows iterator) runs on it.

    Args:
        spark: the SparkSession.
        tasks: the tasks, in order.
        mapper: the partition function, fed the partition's tasks.

    Returns:
        The RDD of ``mapper``'s rows (collect it, or add a resource profile first).
    """

    def run(indices: Iterator[int]) -> Iterator:
        return mapper(tasks[i] for i in indices)

    return spark.sparkContext.parallelize(range(len(tasks)), len(tasks)).mapPartitions(run)


def pixels_overlap(npix: int, order: int, other: int, other_order: int) -> bool:
    """Whether pixel ``npix`` at ``order`` and pixel ``other`` at ``other_order`` overlap (nested:
    one holds the other)."""
    if order >= other_order:
        return npix >> 2 * (order - other_order) == other
    return other >> 2 * (other_order - order) == npix


def map_pixels(spark, source, path, process: Callable[[int, str, dict], Iterator[pa.RecordBatch]], *,
               schema: pa.Schema, catalog_name: str, order: int | None = None,
               task_order: int | None = None, extra_properties: dict | None = None, profile=None) -> dict:
    """Write a catalog whose every pixel is computed from the same sky area of ``source``: no shuffle.

    One Spark task per source pixel (or per pixel at ``task_order``, or per output pixel if
    ``order`` is coarser than the source's) calls ``process`` for each of its source pixels in
    Npix order and streams what it yields into the output files, so rows go from
    disk to disk without a trip through the JVM or a shuffle. Tasks are queued biggest first, so
    the small pixels fill the cores at the end; each reports its files' rows and bytes and the
    statistics ``process`` counted, so the driver reads nothing back.

    Args:
        spark: the SparkSession.
        source: a HATS catalog folder, visible to every executor.
        path: the output catalog folder; replaced only once the new catalog is complete.
        process: runs on the executors, once per source pixel, with (Npix, the pixel's data file,
            a dict of statistics to add integers to); yields batches of ``schema`` sorted by
            ``_healpix_29`` and inside that pixel. Pixels of a task are processed in Npix order.
        schema: the output schema (recorded even when there are no rows).
        catalog_name: recorded as ``obs_collection``.
        order: the output's HEALPix order; None: the source's.
        task_order: group the source pixels of each pixel at this (coarser) order into one task;
            None: one task per source pixel.
        extra_properties: more ``properties`` keys (may not override computed ones).
        profile: a Spark ResourceProfile for the tasks (stage-level scheduling: e.g. a fraction of
            a GPU per scoring task); None: the session's defaults.

    Returns:
        Summary dict: path, n_rows, n_partitions, order, n_row_groups, stats (summed over tasks).

    Raises:
        ValueError: ``schema`` lacks the coordinates or ``_healpix_29``.
    """
    catalog = _require_catalog(source)
    props = read_properties(catalog)
    source_order, ra_col, dec_col = int(props["hats_order"]), props["hats_col_ra"], props["hats_col_dec"]
    out_order = source_order if order is None else order
    h29 = schema.field(HEALPIX_COLUMN) if HEALPIX_COLUMN in schema.names else None
    _check_columns(schema.names, str(h29.type) if h29 else None, ra_col=ra_col, dec_col=dec_col, order=out_order)
    tasks = _tasks(catalog, min(out_order, source_order if task_order is None else task_order))

    def write_pixels(dataset_dir: Path) -> _Written:
        if not tasks:
            return _Written({})
        # One partition per task, in list order (Spark schedules partitions in index order), the
        # list in the closure. A Python RDD of the indices (one stage, its reports pickled back),
        # not spark.range + mapInArrow: the SQL and Arrow machinery around a Python stage costs
        # the JVM ~2 CPU s more on a job's first stage (bench/RESULTS.md), for 13 report rows.
        mapper = _executor_pixel_mapper(str(catalog / DATASET_DIR), str(dataset_dir), source_order, out_order,
                                        process)
        reports = task_rdd(spark, tasks, mapper)
        if profile is not None:
            reports = reports.withResources(profile)
        return _collect_reports(reports.collect())

    return _write_catalog(path, write_pixels, order=out_order, ra_col=ra_col, dec_col=dec_col,
                          catalog_name=catalog_name, extra_properties=extra_properties,
                          columns=schema.names, fallback_schema=schema)


def _pixel_file_reader(fn, columns: list[str], batch_size: int, count=None):
    """``map_hats``' ``process``: ``fn`` of the pixel file's batches, each output batch counted by ``count``."""

    def process(npix: int, path: str, stats: dict) -> Iterator[pa.RecordBatch]:
        batches = fn(pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns))
        return batches if count is None else _counted(batches, count, stats)

    return process


def _counted(batches: Iterator[pa.RecordBatch], count, stats: dict) -> Iterator[pa.RecordBatch]:
    """Pass ``batches`` through, adding ``count(batch)``'s integers to ``stats``."""
    for batch in batches:
        for key, value in count(batch).items():
            stats[key] = stats.get(key, 0) + int(value)
        yield batch


def map_hats(spark, source, path, fn: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]], *,
             columns: list[str], schema: pa.Schema, catalog_name: str, batch_size: int = 65_536,
             extra_properties: dict | None = None,
             count: Callable[[pa.RecordBatch], dict[str, int]] | None = None, profile=None) -> dict:
    """Write a catalog whose every pixel is ``fn`` of the same pixel of ``source``: no shuffle.

    ``map_pixels`` with one task per source pixel that reads its file with pyarrow in batches
    and passes them through ``fn``. A catalog with fewer pixels than cores leaves cores idle.

    Args:
        spark: the SparkSession.
        source: a HATS catalog folder, visible to every executor.
        path: the output catalog folder; replaced only once the new catalog is complete.
        fn: runs on the executors, once per pixel: gets the pixel's batches (``columns`` only,
            in file order) and yields output batches of ``schema``, keeping ``_healpix_29`` and
            the row order (a pixel's output is one sorted run, as in the input).
        columns: the source columns ``fn`` reads.
        schema: the output schema (recorded even when there are no rows).
        catalog_name: recorded as ``obs_collection``.
        batch_size: rows per batch read.
        extra_properties: more ``properties`` keys (may not override computed ones).
        count: runs on the executors for every output batch; the integers it returns are summed
            over all tasks into the summary's ``stats`` (so the driver never reads the output back).
        profile: the tasks' Spark ResourceProfile (see ``map_pixels``).

    Returns:
        Summary dict: path, n_rows, n_partitions, order, n_row_groups, stats.

    Raises:
        ValueError: ``columns`` not all in ``source``, or ``schema`` lacks the coordinates.
    """
    catalog = _require_catalog(source)
    missing = [c for c in columns if c not in read_schema(catalog).names]
    if missing:
        raise ValueError(f"{catalog} lacks columns {', '.join(missing)}")
    return map_pixels(spark, catalog, path, _pixel_file_reader(fn, list(columns), batch_size, count), schema=schema,
                      catalog_name=catalog_name, extra_properties=extra_properties, profile=profile)


def read_properties(path) -> dict[str, str]:
    """Read a catalog's ``properties`` file.

    Args:
        path: the catalog folder.

    Returns:
        key -> value, all strings (``hats_nrows`` etc. are left for the caller to convert).

    Raises:
        FileNotFoundError: if ``path`` is not a HATS catalog.
    """
    catalog = _require_catalog(path)
    props = {}
    for line in (catalog / PROPERTIES_FILE).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def read_schema(path) -> pa.Schema:
    """A catalog's Arrow schema, from ``dataset/_common_metadata`` (no data file is opened).

    Args:
        path: the catalog folder.

    Returns:
        The schema of its data files.

    Raises:
        FileNotFoundError: if ``path`` is not a HATS catalog.
    """
    return pq.read_schema(_require_catalog(path) / DATASET_DIR / "_common_metadata")


def check_data_files(path, name: str | None = None, columns: Iterable[str] | None = None) -> int:
    """Read every data file's Parquet footer (no data): each must be readable, hold ``columns``
    with the types ``dataset/_common_metadata`` records, and all together the ``hats_nrows`` rows
    of ``properties``. A truncated copy, a file still being written or rewritten with a text flux
    column, is one line naming the file, not a Spark traceback later.

    Args:
        path: the catalog folder.
        name: how the message names the catalog (default: its path).
        columns: the columns to check (default: every column of the catalog's schema).

    Returns:
        The rows the data files hold.

    Raises:
        InputError: one line naming the catalog, the file and the column.
    """
    catalog, name = Path(path), name or str(path)
    props = read_properties(catalog)
    info = catalog / PARTITION_INFO_FILE
    if not info.is_file():
        raise InputError(f"catalog {name}: {info} is missing: not a complete HATS catalog; rewrite it")
    common = read_schema(catalog)
    wanted = [c for c in (columns if columns is not None else common.names) if c in common.names]
    rows = 0
    for line in info.read_text().split()[1:]:  # a header, then one "Norder,Npix" line per data file
        order, npix = (int(v) for v in line.split(",")[:2])
        data = catalog / DATASET_DIR / pixel_relpath(order, npix)  # the files jobs read
        try:
            meta = pq.read_metadata(data)
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"catalog {name}: data file {data} is unreadable ({reason}): "
                             "copy or rewrite the catalog") from None
        wrong = [f"{c} is {schema.field(c).type if c in schema.names else 'missing'}, not {common.field(c).type}"
                 for c in wanted if c not in schema.names or schema.field(c).type != common.field(c).type]
        if wrong:
            raise InputError(f"catalog {name}: data file {data}: column {', '.join(wrong)} (as the catalog's "
                             "schema says): rewrite the file with the catalog's column types")
        rows += meta.num_rows
    expected = int(props.get("hats_nrows", -1))
    if expected >= 0 and rows != expected:
        raise InputError(f"catalog {name}: its data files hold {rows} rows but its properties say "
                         f"hats_nrows={expected}: files are missing or extra; rewrite the catalog")
    return rows


def read_hats(spark, path):
    """Read a HATS catalog's data into a Spark DataFrame.

    The ``Norder=``/``Dir=`` folders are not turned into columns (partition discovery is off):
    the DataFrame has exactly the files' columns, ``_healpix_29`` included, from which the
    partition pixel is ``pixel_at_order(_healpix_29, hats_order)`` if needed.

    Args:
        spark: the SparkSession.
        path: the catalog folder.

    Returns:
        A DataFrame of all rows.

    Raises:
        FileNotFoundError: if ``path`` is not a HATS catalog.
    """
    catalog = _require_catalog(path)
    dataset = catalog / DATASET_DIR
    if int(read_properties(catalog).get("hats_nrows", "1")) == 0:
        # Spark cannot infer a schema from a folder without data files.
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(pq.read_schema(dataset / "_common_metadata"))
        return spark.createDataFrame([], schema)
    return spark.read.option("recursiveFileLookup", "true").parquet(str(dataset))


def _require_catalog(path) -> Path:
    catalog = Path(path)
    if not _is_catalog(catalog):
        raise FileNotFoundError(
            f"{catalog} is not a HATS catalog (expected {catalog / PROPERTIES_FILE} and {catalog / DATASET_DIR}/)"
        )
    return catalog


def check_replaceable(target) -> None:
    """Refuse (``FileExistsError``) a ``target`` that exists and is not a catalog or an empty folder."""
    _check_target(Path(target))


def replace_folder(staging, target) -> None:
    """Move a finished folder (e.g. a catalog written elsewhere) to ``target``, replacing it.

    Jobs that write several catalogs stage them all first and then commit each with this, so a
    failure before the commits leaves every earlier catalog untouched.
    """
    _check_target(Path(target))
    _commit(Path(staging), Path(target))
