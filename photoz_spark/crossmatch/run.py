"""Spark orchestration of the crossmatch: left catalog x right catalogs -> ``matched/<run>`` (HATS).

Every check (settings, catalogs, columns, output names) runs before Spark does any work. The
work follows the partitions (LSDB's idea, on Spark): one task per left pixel reads the pixel's
rows and, with pyarrow, only the right catalogs' pixels that overlap the pixel plus a margin
ring (``geometry.search_region``; the two sides may have different HEALPix orders), matches each
left batch in memory with a ``CrossmatchAlgorithm`` and writes the pixel's output file
(``hats.map_pixels``). No catalog goes through a shuffle; right-side reads are proportional to
the left footprint. Every left row is kept, in its file's order (exactly one output row per left
row when k = 1). A left row with bad coordinates is kept unmatched and flagged BAD_COORDS and
NO_MATCH. DUPLICATE_ID needs the whole catalog: one aggregation over the id column finds the
duplicated ids first, and they are broadcast to the tasks.

With k > 1 a left row gets one output row per rank r = 1..max over right catalogs of
min(k, candidates), i.e. max(1, matches) rows: row r holds each right catalog's r-th nearest
counterpart (``C_rank`` = r), or nulls where that catalog has fewer; ``C_n_candidates`` and
``flags`` repeat on every row of the left row.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from photoz_spark import hats
from photoz_spark.bands import Registry
from photoz_spark.config import require
from photoz_spark.crossmatch import geometry, margins
from photoz_spark.crossmatch.algorithm import CrossmatchAlgorithm, HealpixMatch, KdTreeMatch, Sky
from photoz_spark.crossmatch.catalogs import CatalogError, InputCatalog, open_catalog
from photoz_spark.flags import FLAGS_COLUMN, Flag, count_flags
from photoz_spark.staging import job_staging

RESERVED_PREFIX = "_xm_"  # reserved for the crossmatch's own columns: catalogs may not use it
LEFT_BATCH_ROWS = 65_536  # left rows matched at a time (the right region stays in memory per task)
RIGHT_BYTES_PER_TASK = 256 * 2**20  # at most this much right-catalog data (on disk) per task's block
TASKS_PER_CORE = 4  # at least this many tasks per core, so the small ones even out the big ones
DRIVER_ID_ROWS = 2**24  # duplicate ids found on the driver (~128 MB of int64 ids at most), above with Spark
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ALGORITHMS = {a.name: a for a in (HealpixMatch, KdTreeMatch)}  # crossmatch.algorithm


@dataclass(frozen=True)
class CrossmatchPlan:
    """Everything the crossmatch will do, fixed and checked before any work."""

    run: str
    left: InputCatalog
    right: tuple[InputCatalog, ...]
    algorithm: CrossmatchAlgorithm
    output_order: int
    target: Path
    columns: tuple[str, ...]  # output columns, in order

    def properties(self) -> dict:
        """Provenance for the output's ``properties`` file (``photoz_crossmatch_*`` keys)."""
        props = {"left": self.left.name, "right": [c.name for c in self.right], **self.algorithm.properties()}
        # The rows carry the left catalog's id/ra/dec (and z) columns and every band below: later
        # jobs find them by these, whatever the catalogs were named (BandCatalog.resolve_catalog).
        bands = [b for c in (self.left, *self.right) for b in c.bands]
        return {"photoz_catalog": self.left.kind, "photoz_bands": bands or "none",
                **{f"photoz_crossmatch_{key}": value for key, value in props.items()}}


def match_columns(name: str, k: int) -> dict[str, str]:
    """Output names of a right catalog's match columns: what -> ``<catalog>_<what>``."""
    columns = {"id": f"{name}_id", "sep": f"{name}_sep_arcsec", "n": f"{name}_n_candidates"}
    if k > 1:
        columns["rank"] = f"{name}_rank"
    return columns


# --- validation ------------------------------------------------------------------------------

def make_algorithm(xm: dict) -> CrossmatchAlgorithm:
    """The algorithm the settings ask for, validated (ValueError saying what to change)."""
    join_order = str(xm["join_order"]).strip()
    require(join_order == "auto" or join_order.isdigit(),
            f"crossmatch.join_order must be auto or a HEALPix order 0..{hats.HEALPIX_ORDER}, got {xm['join_order']!r}")
    require(xm["algorithm"] in ALGORITHMS,
            f"crossmatch.algorithm must be one of {', '.join(ALGORITHMS)}, got {xm['algorithm']!r}")
    algorithm = ALGORITHMS[xm["algorithm"]](xm["radius_arcsec"], xm["k"],
                                            None if join_order == "auto" else int(join_order))
    algorithm.validate()
    return algorithm


def validate(xm: dict, registry: Registry, workdir=None) -> CrossmatchAlgorithm:
    """Refuse settings that cannot work, before reading any catalog.

    Args:
        xm: the ``crossmatch`` section of the configuration (conf/crossmatch.yaml).
        registry: the bands file's contents.
        workdir: a ``cli.Workdir``: a catalog is known if it is under ``catalogs:`` of the bands
            file or ``catalogs/<name>`` exists there (an ingested catalog, under any name).

    Returns:
        The validated algorithm.
    """
    def known(name) -> bool:
        return name in registry.catalogs or (
            workdir is not None and (Path(workdir.catalog(str(name))) / hats.PROPERTIES_FILE).is_file())

    allowed = ", ".join(registry.catalogs) + " or a catalog ingested under catalogs/"
    require(bool(_RUN_NAME.fullmatch(str(xm["run"]))),
            f"crossmatch.run must be a folder name (letters, digits, _ . -), got {xm['run']!r}")
    require(known(xm["left"]), f"crossmatch.left: unknown catalog {xm['left']!r}; allowed: {allowed}")
    right = xm["right"]
    require(isinstance(right, list) and len(right) > 0, f"crossmatch.right must list at least one catalog of: {allowed}")
    unknown = [c for c in right if not known(c)]
    require(not unknown, f"crossmatch.right: unknown catalog(s) {unknown}; allowed: {allowed}")
    require(len(set(right)) == len(right), f"crossmatch.right lists a catalog twice: {right}")
    require(xm["left"] not in right, f"crossmatch.right must not include the left catalog {xm['left']!r}")
    order = xm["output_order"]
    require(order is None or (isinstance(order, int) and not isinstance(order, bool)
                              and 0 <= order <= hats.HEALPIX_ORDER),
            f"crossmatch.output_order must be empty (the left catalog's order) or 0..{hats.HEALPIX_ORDER}, got {order!r}")
    return make_algorithm(xm)


def make_plan(xm: dict, registry: Registry, workdir) -> CrossmatchPlan:
    """Validate the settings and the catalogs, and fix the output schema.

    Args:
        xm: the ``crossmatch`` section of the configuration.
        registry: the bands file's contents.
        workdir: a ``cli.Workdir``; catalogs are read from ``catalogs/<name>``.

    Returns:
        The plan.

    Raises:
        ConfigError: a bad setting.
        CatalogError: a missing catalog, column, wrong type or an output name collision.
    """
    algorithm = validate(xm, registry, workdir)
    left = open_catalog(xm["left"], workdir.catalog(xm["left"]), registry, with_bands=False)
    right = tuple(open_catalog(c, workdir.catalog(c), registry, with_bands=True) for c in xm["right"])
    for catalog in (left, *right):  # the tasks follow the partitions: their order must be known
        if catalog.order is None:
            raise CatalogError(f"catalog {catalog.name!r} ({catalog.path}) has no hats_order in its properties; "
                               "write it with jobs/ingest_catalog.py (or add hats_order=<its Norder>)")
    order = xm["output_order"] if xm["output_order"] is not None else left.order
    columns = output_columns(left, right, algorithm.k)
    return CrossmatchPlan(run=xm["run"], left=left, right=right, algorithm=algorithm, output_order=order,
                          target=Path(workdir.matched) / xm["run"], columns=tuple(columns))


def output_columns(left: InputCatalog, right: tuple[InputCatalog, ...], k: int) -> list[str]:
    """All left columns, then each right catalog's match and band columns, then ``flags``.

    Raises:
        CatalogError: if two sources would give the output the same column name.
    """
    owner = {c: f"the left catalog {left.name!r}" for c in left.columns}
    owner.setdefault(FLAGS_COLUMN, "the flags column")  # a left ``flags`` is kept and ORed into
    for catalog in (left, *right):
        reserved = [c for c in catalog.columns if c.startswith(RESERVED_PREFIX)]
        if reserved:
            raise CatalogError(f"catalog {catalog.name!r} has column(s) {reserved}: the prefix "
                               f"{RESERVED_PREFIX!r} is reserved for the crossmatch; rename them")
    columns = list(left.columns)
    for catalog in right:
        for column in [*match_columns(catalog.name, k).values(), *catalog.band_columns, *catalog.carried]:
            if column in owner:
                raise CatalogError(f"output column {column!r} from right catalog {catalog.name!r} would collide "
                                   f"with {owner[column]}; rename one of them")
            owner[column] = f"right catalog {catalog.name!r}"
            columns.append(column)
    if FLAGS_COLUMN not in left.columns:
        columns.append(FLAGS_COLUMN)
    return columns


# --- the Spark stage -------------------------------------------------------------------------

def crossmatch(spark, plan: CrossmatchPlan, workdir) -> dict:
    """Run a validated plan and write ``matched/<run>``: one Spark task per left pixel, no shuffle.

    Each task reads its left pixel's rows and, with pyarrow, only the right pixels that overlap
    the pixel's search region (``geometry.search_region``), matches in memory and writes the
    output file of that pixel (``hats.map_pixels``); the statistics come back with the task.

    Args:
        spark: the SparkSession.
        plan: from ``make_plan``.
        workdir: the ``cli.Workdir`` (its root holds the job's staging folder).

    Returns:
        Summary: rows in/out, per right catalog matched/unmatched/ambiguous counts and match
        rate, flagged rows by reason, seconds, rows/s and the output path.
    """
    t0 = time.time()
    duplicates = spark.sparkContext.broadcast(duplicate_ids(spark, plan.left))
    rights = right_sides(spark, plan, workdir.root)
    blocks = task_order(plan, rights, spark.sparkContext.defaultParallelism)
    process = _BlockMatcher(plan, rights, duplicates, blocks)
    with job_staging(workdir.root, "crossmatch") as stage:
        written = hats.map_pixels(spark, plan.left.path, stage.output(plan.run, plan.target), process,
                                  schema=output_schema(plan), catalog_name=plan.run, order=plan.output_order,
                                  task_order=blocks, extra_properties=plan.properties())
        stage.commit()
    duplicates.destroy()
    summary = _summarise(plan, {**written, "task_order": blocks})
    summary["margin_cache"] = {side.catalog.name: side.margin_note for side in rights}
    seconds = time.time() - t0
    summary.update(seconds=seconds, rows_per_s=summary["rows_in"] / seconds if seconds > 0 else 0.0)
    return summary


def duplicate_ids(spark, catalog: InputCatalog) -> list:
    """The left ids that occur more than once in the whole catalog (for Flag.DUPLICATE_ID).

    Up to ``DRIVER_ID_ROWS`` rows (``hats_nrows``), the driver reads the id column with pyarrow
    (at most ~8 bytes x that many rows, a fixed bound whatever the catalog: a Spark job costs
    several CPU seconds of JVM time however few the rows). Above it, one Spark aggregation over
    the id column alone (map-side combined: ~8 bytes a row go through the shuffle, no other
    column); the driver holds only the duplicated ids. Null ids are never duplicates (as a join
    on them never matches).

    Returns:
        The duplicated ids, sorted.
    """
    rows = int(catalog.properties.get("hats_nrows", DRIVER_ID_ROWS + 1))
    if rows <= DRIVER_ID_ROWS:
        return _duplicate_ids_local(catalog)
    from pyspark.sql import functions as F

    ids = hats.read_hats(spark, catalog.path).select(catalog.id).where(F.col(catalog.id).isNotNull())
    return sorted(row[0] for row in ids.groupBy(catalog.id).count().where(F.col("count") > 1)
                  .select(catalog.id).collect())


def _duplicate_ids_local(catalog: InputCatalog) -> list:
    """``duplicate_ids`` on the driver: every file's id column, counted with pyarrow."""
    order, pixels = hats.partition_pixels(catalog.path)
    dataset = catalog.path / hats.DATASET_DIR
    ids = [pq.ParquetFile(dataset / hats.pixel_relpath(order, p)).read(columns=[catalog.id], use_threads=False)
           .column(0) for p in pixels.tolist()]
    if not ids:
        return []
    column = pa.chunked_array([c for chunked in ids for c in chunked.chunks],
                              type=catalog.schema.field(catalog.id).type).drop_null()
    counts = pc.value_counts(column)
    values = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    return sorted(values.to_pylist())


@dataclass(frozen=True)
class RightSide:
    """A right catalog and its partitions, as the tasks need them to find the pixels to read."""

    catalog: InputCatalog
    order: int
    pixels: np.ndarray  # sorted Npix at ``order``
    margins: Path | None = None  # its margin cache (``margins``): border rows of each pixel
    margin_note: str = "none"    # for the summary: built (rows), current, or why none

    @property
    def columns(self) -> list[str]:
        return [self.catalog.id, self.catalog.ra, self.catalog.dec, hats.HEALPIX_COLUMN, *self.catalog.band_columns,
                *self.catalog.carried]


def right_sides(spark, plan: CrossmatchPlan, workdir_root: Path) -> list[RightSide]:
    """The right catalogs with their partitions and current margin caches (built when missing or stale).

    A catalog of the work directory keeps its cache inside it; one linked from elsewhere gets it
    under ``<workdir>/margins/<name>`` (``margins.cache_home``): nothing is written into it.

    A catalog whose folder cannot be written (a shared, read-only copy) is read without a
    cache: whole neighbour files, the same rows kept.
    """
    sides = []
    for catalog in plan.right:
        order, pixels = hats.partition_pixels(catalog.path)
        try:
            home = margins.cache_home(catalog.path, catalog.name, workdir_root)
            cache, built = margins.ensure(spark, catalog.path, plan.algorithm.join_order, home)
        except OSError as err:
            cache, built = None, {"error": f"{type(err).__name__}: {err}"}
        note = ("none: the catalog's order is finer than the margin order" if cache is None and built is None
                else f"none ({built['error']})" if cache is None
                else "current" if built is None else f"built ({built['rows']:,d} border rows)")
        sides.append(RightSide(catalog, order, pixels, cache, note))
    return sides


def output_schema(plan: CrossmatchPlan) -> pa.Schema:
    """The output's Arrow schema, in ``plan.columns`` order."""
    types = {f.name: f.type for f in plan.left.schema}
    types[FLAGS_COLUMN] = pa.int32()
    for catalog in plan.right:
        names = match_columns(catalog.name, plan.algorithm.k)
        types.update({names["id"]: catalog.schema.field(catalog.id).type, names["sep"]: pa.float64(),
                      names["n"]: pa.int32(), **({names["rank"]: pa.int32()} if "rank" in names else {})})
        types.update({c: catalog.schema.field(c).type for c in (*catalog.band_columns, *catalog.carried)})
    return pa.schema([(c, types[c]) for c in plan.columns])


class _BlockMatcher:
    """``map_pixels``' ``process`` (runs on the executors): a left pixel's rows, matched, as output batches.

    A task holds the left pixels of one block (a pixel at ``block_order``, ``task_order``): the
    right rows of the block's search region are read once, on the first pixel, and serve every
    left pixel of the block (a right file is read by the few blocks it overlaps, not by each of
    its 9 neighbours' tasks).
    """

    def __init__(self, plan: CrossmatchPlan, rights: list[RightSide], duplicates, block_order: int):
        self.plan, self.rights, self.duplicates, self.block_order = plan, rights, duplicates, block_order
        self._block: int | None = None
        self._sides: list[_RightRows] = []

    def __call__(self, npix: int, path: str, stats: dict):
        plan = self.plan
        block = npix >> 2 * (plan.left.order - self.block_order)
        if block != self._block:
            self._sides = []  # free the previous block's rows before reading the next
            lo, hi = geometry.search_region(block, self.block_order, plan.algorithm.join_order)
            self._sides = [_read_right(side, lo, hi, plan.algorithm, (block, self.block_order))
                           for side in self.rights]
            self._block = block
            stats["right_rows_used"] = stats.get("right_rows_used", 0) + sum(len(r.sky) for r in self._sides)
            stats["right_rows_read"] = stats.get("right_rows_read", 0) + sum(r.decoded for r in self._sides)
        dup = pa.array(self.duplicates.value, type=plan.left.schema.field(plan.left.id).type)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=LEFT_BATCH_ROWS):
            yield _match_batch(plan, batch, self._sides, dup, stats)


def task_order(plan: CrossmatchPlan, rights: list[RightSide], cores: int) -> int:
    """The block order of the crossmatch's tasks: as coarse as memory and the cluster allow.

    Coarser blocks read each right file fewer times (the margin ring is a smaller share of a
    bigger block) but hold more right rows in memory and make fewer tasks. The coarsest order
    is taken at which every block's right files total at most ``RIGHT_BYTES_PER_TASK`` and
    there are at least ``TASKS_PER_CORE`` tasks per core; at worst one task per left pixel.

    Args:
        plan: the plan.
        rights: the right catalogs' partitions.
        cores: the cluster's cores (Spark's default parallelism).

    Returns:
        An order between 0 and min(left order, output order).
    """
    finest = min(plan.left.order, plan.output_order)
    left_pixels = hats.partition_pixels(plan.left.path)[1]
    if left_pixels.size == 0:  # an empty left catalog: no task, an empty output
        return finest
    sizes = [(side.order, side.pixels, np.array([
        (side.catalog.path / hats.DATASET_DIR / hats.pixel_relpath(side.order, p)).stat().st_size
        for p in side.pixels.tolist()], dtype=np.float64)) for side in rights]
    for order in range(finest + 1):
        blocks = np.unique(left_pixels >> 2 * (plan.left.order - order))
        if len(blocks) < TASKS_PER_CORE * cores and order < finest:
            continue
        per_block = np.zeros(len(blocks))
        for right_order, pixels, nbytes in sizes:
            if right_order >= order:  # a file inside one block
                key, share = pixels >> 2 * (right_order - order), nbytes
            else:  # a file spread over 4^(order - R) blocks
                key, share = None, nbytes / 4 ** (order - right_order)
            at = np.searchsorted(blocks, key) if key is not None else None
            if at is not None:
                inside = (at < len(blocks)) & (blocks[np.minimum(at, len(blocks) - 1)] == key)
                np.add.at(per_block, at[inside], share[inside])
            else:
                parents = blocks >> 2 * (order - right_order)
                idx = np.searchsorted(pixels, parents)
                has = (idx < len(pixels)) & (pixels[np.minimum(idx, len(pixels) - 1)] == parents)
                per_block[has] += share[idx[has]]
        if per_block.max(initial=0.0) <= RIGHT_BYTES_PER_TASK or order == finest:
            return order
    return finest


@dataclass
class _RightRows:
    """A right catalog's rows in one search region, ready to match."""

    columns: dict        # id and band columns: name -> pa.Array
    sky: Sky             # positions and _healpix_29
    id_order: np.ndarray  # sorts as the ids do, for ties
    prepared: object     # the algorithm's structure (HealpixMatch: sorted cells; KdTreeMatch: a tree)
    decoded: int         # rows of the files read, before the cut to the region


def _read_right(side: RightSide, lo: np.ndarray, hi: np.ndarray, algorithm: CrossmatchAlgorithm,
                block: tuple[int, int]) -> _RightRows:
    """The rows of the right pixels overlapping the region, cut to the region, with finite coordinates.

    A right pixel that overlaps the block itself is read whole; one that only overlaps the ring
    is read from the margin cache (its border rows, which hold every row of the ring) when the
    catalog has one.
    """
    parts, decoded = [], 0
    for npix in geometry.pixels_in_region(side.pixels, side.order, lo, hi).tolist():
        table = _read_pixel(side, npix, ring_only=not hats.pixels_overlap(npix, side.order, *block))
        h29 = table.column(hats.HEALPIX_COLUMN).to_numpy()
        if len(h29) > 1 and np.all(h29[1:] >= h29[:-1]):  # HATS files are sorted: binary search
            rows = geometry.sorted_region_rows(h29, lo, hi)
        else:
            rows = np.flatnonzero(geometry.in_region(h29, lo, hi))
        parts.append(table if len(rows) == table.num_rows else table.take(pa.array(rows)))
        decoded += table.num_rows
    catalog = side.catalog
    table = pa.concat_tables(parts) if parts else pa.schema(
        [catalog.schema.field(c) for c in side.columns]).empty_table()
    ra, dec = _degrees(table.column(catalog.ra)), _degrees(table.column(catalog.dec))
    finite = np.isfinite(ra) & np.isfinite(dec)
    if not finite.all():
        table, ra, dec = table.filter(pa.array(finite)), ra[finite], dec[finite]
    sky = Sky(ra, dec, table.column(hats.HEALPIX_COLUMN).to_numpy())
    ids = table.column(catalog.id)
    # Ties in separation go to the lower id: integer ids order themselves, strings by their rank.
    id_order = ((ids if ids.null_count == 0 else pc.fill_null(ids, 0)).to_numpy() if pa.types.is_integer(ids.type)
                else pc.rank(ids, sort_keys="ascending", tiebreaker="dense").to_numpy())
    carried = {c: table.column(c).combine_chunks() for c in [catalog.id, *catalog.band_columns, *catalog.carried]}
    return _RightRows(carried, sky, id_order, algorithm.prepare(sky), decoded)


def _read_pixel(side: RightSide, npix: int, ring_only: bool) -> pa.Table:
    """A right pixel's needed columns: its border rows from the margin cache, or the whole file."""
    relpath = hats.pixel_relpath(side.order, npix)
    # ParquetFile, not read_table: the latter imports pyarrow.dataset (and pandas) in every worker.
    if ring_only and side.margins is not None:
        try:
            return pq.ParquetFile(side.margins / relpath).read(columns=side.columns, use_threads=False)
        except FileNotFoundError:  # a cache being rebuilt by another job: the whole file is as good
            pass
    return pq.ParquetFile(side.catalog.path / hats.DATASET_DIR / relpath).read(columns=side.columns,
                                                                              use_threads=False)


def _left_h29(batch: pa.RecordBatch, ra: np.ndarray, dec: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``_healpix_29`` of the left rows with valid coordinates, computed where it is missing."""
    h29 = pc.fill_null(batch.column(hats.HEALPIX_COLUMN), -1).to_numpy(zero_copy_only=False)[rows]
    bad = h29 < 0
    if bad.any():
        h29[bad] = hats.healpix29(ra[bad], dec[bad])
    return h29


def _degrees(column) -> np.ndarray:
    """Coordinates as float64, NaN for nulls (no cast nor fill, i.e. no copy, for the usual float64 without nulls)."""
    if pa.types.is_float64(column.type) and column.null_count == 0:
        return column.to_numpy(zero_copy_only=False)
    return pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def _match_batch(plan: CrossmatchPlan, batch: pa.RecordBatch, sides: list[_RightRows], dup: pa.Array,
                 stats: dict) -> pa.RecordBatch:
    """One left batch matched to every right catalog: the output rows and the statistics."""
    k = plan.algorithm.k
    ra, dec = _degrees(batch.column(plan.left.ra)), _degrees(batch.column(plan.left.dec))
    ok = geometry.valid_coords(ra, dec)
    good = np.flatnonzero(ok)
    left = Sky(ra[good], dec[good], _left_h29(batch, ra[good], dec[good], good))
    n = batch.num_rows
    found = []  # per right catalog: (n_candidates per left row, matches with left indices into the batch)
    for side in sides:
        m = plan.algorithm.match(left, side.sky, side.id_order, side.prepared)
        counts = np.zeros(n, dtype=np.int32)
        counts[good] = m.n_candidates
        found.append((counts, good[m.left], m))
    # Output rows: one per left row and rank (max(1, most matches kept over the catalogs)).
    per_row = np.maximum(1, np.max([np.minimum(c, k) for c, _, _ in found], axis=0)) if found else np.ones(n, int)
    row_of = np.repeat(np.arange(n), per_row)
    first = np.cumsum(per_row) - per_row
    columns = {name: batch.column(name).take(pa.array(row_of)) if k > 1 else batch.column(name)
               for name in batch.schema.names}
    no_match = np.zeros(n, dtype=bool)
    ambiguous = np.zeros(n, dtype=bool)
    for catalog, side, (counts, left_rows, m) in zip(plan.right, sides, found, strict=True):
        names = match_columns(catalog.name, k)
        slot = first[left_rows] + m.rank - 1  # the output row of each match
        right_row = np.full(len(row_of), -1, dtype=np.int64)
        right_row[slot] = m.right
        hit = right_row >= 0
        take = pa.array(right_row, mask=~hit)
        columns[names["id"]] = side.columns[catalog.id].take(take)
        sep = np.full(len(row_of), np.nan)
        sep[slot] = m.sep_arcsec
        columns[names["sep"]] = pa.array(sep, mask=~hit)
        columns[names["n"]] = pa.array(counts[row_of], type=pa.int32())
        if "rank" in names:
            rank = np.zeros(len(row_of), dtype=np.int32)
            rank[slot] = m.rank
            columns[names["rank"]] = pa.array(rank, mask=~hit)
        for column in (*catalog.band_columns, *catalog.carried):  # bands, then their extinction
            columns[column] = side.columns[column].take(take)
        no_match |= counts == 0
        ambiguous |= counts > 1
        stats[f"{catalog.name}.matched"] = stats.get(f"{catalog.name}.matched", 0) + int(np.count_nonzero(counts))
        stats[f"{catalog.name}.ambiguous"] = stats.get(f"{catalog.name}.ambiguous", 0) + int(np.count_nonzero(counts > 1))
    duplicated = pc.fill_null(pc.is_in(batch.column(plan.left.id), value_set=dup), False).to_numpy(
        zero_copy_only=False)
    flags = (np.where(~ok, int(Flag.BAD_COORDS), 0) | np.where(no_match, int(Flag.NO_MATCH), 0)
             | np.where(duplicated, int(Flag.DUPLICATE_ID), 0) | np.where(ambiguous, int(Flag.AMBIGUOUS_MATCH), 0))
    if FLAGS_COLUMN in batch.schema.names:  # this stage's bits ORed into any the left catalog carried
        earlier = pc.fill_null(pc.cast(batch.column(FLAGS_COLUMN), pa.int64()), 0).to_numpy(zero_copy_only=False)
        flags = flags | earlier
    for flag, hits in count_flags(flags).items():
        stats[f"flag.{flag}"] = stats.get(f"flag.{flag}", 0) + hits
    stats["rows_in"] = stats.get("rows_in", 0) + n
    columns[FLAGS_COLUMN] = pa.array(flags[row_of].astype(np.int32))
    return pa.RecordBatch.from_arrays([columns[c] for c in plan.columns], schema=output_schema(plan))


def _summarise(plan: CrossmatchPlan, written: dict) -> dict:
    """The job summary, from the statistics the tasks returned (no output is read back)."""
    stats = written["stats"]
    rows_in = stats.get("rows_in", 0)
    per_catalog = {}
    for catalog in plan.right:
        matched = stats.get(f"{catalog.name}.matched", 0)
        per_catalog[catalog.name] = {"matched": matched, "unmatched": rows_in - matched,
                                     "ambiguous": stats.get(f"{catalog.name}.ambiguous", 0),
                                     "match_rate": matched / rows_in if rows_in else 0.0}
    flagged = {f.name: stats.get(f"flag.{f.name}", 0) for f in Flag}
    return {"run": plan.run, "left": plan.left.name, "right": [c.name for c in plan.right],
            "path": str(plan.target), "rows_in": rows_in, "rows_out": written["n_rows"],
            "radius_arcsec": plan.algorithm.radius_arcsec, "k": plan.algorithm.k,
            "join_order": plan.algorithm.join_order, "output_order": plan.output_order,
            "task_order": written.get("task_order"), "right_rows_read": stats.get("right_rows_read", 0),
            "right_rows_used": stats.get("right_rows_used", 0),
            "per_catalog": per_catalog, "flags": flagged}
