"""A margin cache kept with each right catalog: per pixel, only the rows along its border.

A crossmatch task needs, besides the right pixels that overlap its block of left pixels, the
right rows within the radius outside the block (``geometry.search_region``'s ring). Those lie in
the neighbouring right pixels, within one margin-order pixel of their border: reading the
neighbours' whole files decodes ~2x the catalog. The cache (as LSDB's margin catalog, built
once and reused) holds, for every right pixel P at the catalog's order R, the rows of P whose
order-M pixel (M = the margin order, ``join_order``) is on P's border: the nested children of P
at M with a local x or y of 0 or 2^(M-R)-1 (bit arithmetic on ``_healpix_29``, no HEALPix
library). That is 4 / 2^(M-R) of the rows (1.6 % at R=5, M=13).

Why it is enough: a right row X within the radius of a block B but outside B, in right pixel
P', lies in the ring of B at M (the neighbours of B's border pixels at M, pixels >= 10 radii,
``search_region``), so X's order-M pixel touches a pixel outside P' and is on P''s border.

Layout: ``<catalog>/photoz_margins/order=<M>/Norder=<R>/Dir=<d>/Npix=<n>.parquet`` (all columns,
the file's row order) and ``manifest.json``, which records each data file's size and
modification time. Inside the catalog folder, a catalog replaced by a job takes its cache with
it; a data file changed in place makes the manifest disagree, and the cache is rebuilt
(``ensure``). Built by a Spark job of one task per group of right pixels, staged and renamed
into place, so a reader never sees half a cache. A catalog that lives outside the work
directory (linked with ``ingest.hats_input=link``) is never written into: its cache goes to
``<workdir>/margins/<name>/order=<M>/`` (``cache_home``), with the same manifest check.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from photoz_spark import hats

CACHE_DIR = "photoz_margins"
MANIFEST = "manifest.json"
FORMAT = 1  # bump when the cache's layout or meaning changes: older caches are rebuilt


def cache_path(catalog: Path, margin_order: int, home: Path | None = None) -> Path:
    """Where a catalog's margin cache at ``margin_order`` lives: inside the catalog, or under
    ``home`` for a catalog the project must not write into (``cache_home``)."""
    return (Path(home) if home is not None else Path(catalog) / CACHE_DIR) / f"order={margin_order}"


def cache_home(catalog: Path, name: str, workdir_root: Path) -> Path | None:
    """None (the cache goes inside the catalog) for a catalog of the work directory; for one that
    lives elsewhere (a linked HATS catalog, ``ingest.hats_input=link``), ``<workdir>/margins/<name>``,
    so a crossmatch never writes into a user's own data folder."""
    root = Path(workdir_root).resolve()
    resolved = Path(catalog).resolve()
    return None if resolved.is_relative_to(root) else root / "margins" / name


def fingerprint(catalog: Path) -> dict:
    """What the cache was built from: each data file's (bytes, mtime ns), the order and the format."""
    order, pixels = hats.partition_pixels(catalog)
    files = {}
    for npix in pixels.tolist():
        stat = (Path(catalog) / hats.DATASET_DIR / hats.pixel_relpath(order, npix)).stat()
        files[str(npix)] = [stat.st_size, stat.st_mtime_ns]
    return {"format": FORMAT, "order": order, "files": files}


def is_current(catalog: Path, margin_order: int, home: Path | None = None) -> bool:
    """Whether the cache exists and was built from the catalog's data files as they are now."""
    manifest = cache_path(catalog, margin_order, home) / MANIFEST
    try:
        return json.loads(manifest.read_text()) == fingerprint(catalog)
    except (OSError, ValueError):
        return False


def usable(order: int, margin_order: int) -> bool:
    """Whether a catalog at ``order`` can have a cache at ``margin_order`` (border pixels need M >= R)."""
    return margin_order >= order


def border_rows(h29: np.ndarray, npix: int, order: int, margin_order: int) -> np.ndarray:
    """Rows of pixel ``npix`` (at ``order``) whose order-``margin_order`` pixel is on its border.

    Args:
        h29: the rows' ``_healpix_29`` (inside the pixel).
        npix: the pixel.
        order: its order R.
        margin_order: M >= R.

    Returns:
        Boolean mask.
    """
    depth = margin_order - order
    local = (np.asarray(h29, dtype=np.int64) >> 2 * (hats.HEALPIX_ORDER - margin_order)) - (
        np.int64(npix) << 2 * depth)
    x, y = np.zeros_like(local), np.zeros_like(local)
    for bit in range(depth):  # nested index: x and y bits interleaved (x even, y odd)
        x |= ((local >> 2 * bit) & 1) << bit
        y |= ((local >> (2 * bit + 1)) & 1) << bit
    edge = (1 << depth) - 1
    return (x == 0) | (y == 0) | (x == edge) | (y == edge)


def _write_borders(catalog: str, target: str, order: int, margin_order: int, pixels: list[int]) -> int:
    """One build task: the border rows of each pixel into the staged cache; returns the rows written."""
    written = 0
    for npix in pixels:
        relpath = hats.pixel_relpath(order, npix)
        table = pq.ParquetFile(Path(catalog) / hats.DATASET_DIR / relpath).read(use_threads=False)
        mask = border_rows(table.column(hats.HEALPIX_COLUMN).to_numpy(), npix, order, margin_order)
        out = Path(target) / relpath
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(mask), out)
        written += int(mask.sum())
    return written


def build(spark, catalog: Path, margin_order: int, home: Path | None = None) -> dict:
    """Build (or rebuild) a catalog's margin cache at ``margin_order`` with Spark.

    Args:
        spark: the SparkSession; None: build in this process.
        catalog: the right catalog's folder (visible to the executors).
        margin_order: M, at least the catalog's order.
        home: where the cache goes instead of inside the catalog (``cache_home``); None: inside.

    Returns:
        {"path", "rows", "pixels"}.
    """
    catalog = Path(catalog)
    order, pixels = hats.partition_pixels(catalog)
    if not usable(order, margin_order):
        raise ValueError(f"a margin cache at order {margin_order} needs a catalog at order <= it, not {order}")
    manifest = fingerprint(catalog)  # before reading: a file changed during the build makes it stale
    final = cache_path(catalog, margin_order, home)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    try:
        groups = [chunk.tolist() for chunk in np.array_split(pixels, max(1, min(len(pixels), 4 * _cores(spark))))]
        groups = [g for g in groups if g]
        args = (str(catalog), str(staging), order, margin_order)
        if spark is None:
            rows = sum(_write_borders(*args, g) for g in groups)
        elif groups:
            # A Python RDD of the group indices, as hats.map_pixels: the crossmatch's tasks then
            # fork from the same Python daemon (a mapInArrow stage would start a second one).
            rows = sum(hats.task_rdd(spark, groups, lambda tasks: (_write_borders(*args, g) for g in tasks)).collect())
        else:
            rows = 0
        (staging / MANIFEST).write_text(json.dumps(manifest))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(final), "rows": rows, "pixels": len(pixels)}


def ensure(spark, catalog: Path, margin_order: int, home: Path | None = None) -> tuple[Path | None, dict | None]:
    """The catalog's current margin cache at ``margin_order``, built if missing or stale
    (inside the catalog, or under ``home`` when given: ``cache_home``).

    Returns:
        (cache folder or None where the catalog's order is finer than ``margin_order``,
        the build's summary or None when the cache was current).
    """
    order, _ = hats.partition_pixels(catalog)
    if not usable(order, margin_order):
        return None, None
    if is_current(catalog, margin_order, home):
        return cache_path(catalog, margin_order, home), None
    summary = build(spark, catalog, margin_order, home)
    return cache_path(catalog, margin_order, home), summary


def _cores(spark) -> int:
    return 1 if spark is None else max(1, int(spark.sparkContext.defaultParallelism))
