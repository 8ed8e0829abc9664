"""Crossmatch algorithms: given a left and a right catalog, each left row's nearest right rows.

One small class per algorithm behind ``CrossmatchAlgorithm`` (as LSDB's crossmatch does), so
another method (a probabilistic one, a proper-motion-aware one) can be added without touching
the job.

``HealpixNeighbourMatch``: why a pixel join and not a tree or a HATS partition join
-------------------------------------------------------------------------------------
A k-d tree per partition (LSDB, astropy) needs each right partition plus a margin of its
neighbours in one place; Spark has no such co-location for free, and partitions at the HATS
order (13 deg^2 at order 4) are far larger than a match radius. Instead the join key is a
HEALPix pixel at a fine order M chosen from the radius (pixel size >= 10 x radius, see
``geometry.auto_join_order``), and Spark's own hash/sort-merge join does the pairing:

* each LEFT row is exploded to its own order-M pixel plus its (up to 8) neighbours, in a
  vectorised Arrow function (``geometry.search_pixels``);
* each RIGHT row is keyed by its own order-M pixel, ``_healpix_29 >> 2 (29 - M)`` (no UDF).

A right object lies in exactly one pixel and a left row's 9 pixels are distinct, so a (left,
right) pair meets at most once: no deduplication. The 9 pixels cover every point within ~0.7
pixel sizes of the left row, well beyond the radius, so nothing is lost at pixel borders, at
RA 0/360 or at the poles (neighbourhoods are HEALPix's, not RA/Dec boxes). The separation is
exact (chord between unit vectors, ``2 asin(|u - v| / 2)``), computed in Spark SQL; pairs within
the radius are ranked per left row by (separation, right id) with a window.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from photoz_spark.crossmatch import geometry
from photoz_spark.hats import HEALPIX_COLUMN, HEALPIX_ORDER

# Column names of the algorithm's contract (the "_xm_" prefix is reserved: catalogs may not use it).
ROW, RA, DEC, RIGHT_ID = "_xm_row", "_xm_ra", "_xm_dec", "_xm_id"
SEP, RANK, N_CANDIDATES = "_xm_sep", "_xm_rank", "_xm_n"
_PIX, _X, _Y, _Z = "_xm_pix", "_xm_x", "_xm_y", "_xm_z"


class CrossmatchAlgorithm(ABC):
    """Finds, for every left row, the ``k`` nearest right rows within ``radius_arcsec``.

    Args:
        radius_arcsec: the match radius, > 0.
        k: how many counterparts to keep per left row, >= 1.
    """

    def __init__(self, radius_arcsec: float, k: int):
        self.radius_arcsec = float(radius_arcsec)
        self.k = int(k)

    def validate(self) -> None:
        """Refuse settings the algorithm cannot honour (ValueError saying what to change)."""
        if not (np.isfinite(self.radius_arcsec) and self.radius_arcsec > 0):
            raise ValueError(f"crossmatch.radius_arcsec must be > 0, got {self.radius_arcsec}")
        if self.k < 1:
            raise ValueError(f"crossmatch.k must be >= 1, got {self.k}")

    @abstractmethod
    def properties(self) -> dict:
        """The settings to record in the output catalog (keys without a prefix)."""

    @abstractmethod
    def match(self, left, right):
        """Candidates within the radius, ranked.

        Args:
            left: DataFrame of left rows with valid coordinates: ``_xm_row`` (unique long),
                ``_healpix_29``, ``_xm_ra``, ``_xm_dec`` (degrees).
            right: DataFrame of right rows: ``_xm_id``, ``_healpix_29``, ``_xm_ra``, ``_xm_dec``
                and any columns to carry.

        Returns:
            One row per (left row, right row) with rank <= k: ``_xm_row``, ``_xm_rank`` (1 = the
            nearest), ``_xm_n`` (candidates within the radius), ``_xm_sep`` (arcsec),
            ``_xm_id`` and the carried right columns. Left rows without a candidate are absent.
        """


class HealpixNeighbourMatch(CrossmatchAlgorithm):
    """Nearest neighbours by an equi-join on HEALPix pixels at a fine order (module docstring).

    Args:
        radius_arcsec: the match radius, > 0.
        k: how many counterparts to keep per left row, >= 1.
        join_order: the HEALPix order of the join keys, or None for ``geometry.auto_join_order``.
    """

    name = "healpix_neighbours"

    def __init__(self, radius_arcsec: float, k: int = 1, join_order: int | None = None):
        super().__init__(radius_arcsec, k)
        self.join_order = join_order

    def validate(self) -> None:
        super().validate()
        auto = geometry.auto_join_order(self.radius_arcsec)  # raises for a radius that is too large
        if self.join_order is None:
            self.join_order = auto
        elif not 0 <= self.join_order <= auto:
            raise ValueError(
                f"crossmatch.join_order={self.join_order} is too fine for a {self.radius_arcsec} arcsec radius "
                f"(pixel size must be >= {geometry.PIXEL_SIZE_PER_RADIUS:g} x radius); use 0..{auto} or auto")

    def properties(self) -> dict:
        return {"algorithm": self.name, "radius_arcsec": self.radius_arcsec, "k": self.k,
                "join_order": self.join_order}

    def match(self, left, right):
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        shift = 2 * (HEALPIX_ORDER - self.join_order)
        keyed_left = left.select(ROW, HEALPIX_COLUMN, RA, DEC).mapInArrow(
            _explode_to_search_pixels(self.join_order), f"{ROW} long, {_PIX} long, {_X} double, {_Y} double, {_Z} double")
        carried = [c for c in right.columns if c not in (HEALPIX_COLUMN, RA, DEC)]
        keyed_right = right.select(
            F.shiftright(HEALPIX_COLUMN, shift).alias(_PIX), *_sql_unit_vector(RA, DEC, "_r"), *carried)
        pairs = keyed_left.join(keyed_right, _PIX).select(
            ROW, _sql_separation_arcsec().alias(SEP), *carried)
        within = pairs.filter(F.col(SEP) <= self.radius_arcsec)
        per_left = Window.partitionBy(ROW)
        return (within
                .withColumn(N_CANDIDATES, F.count(F.lit(1)).over(per_left).cast("int"))
                .withColumn(RANK, F.row_number().over(per_left.orderBy(SEP, RIGHT_ID)))
                .filter(F.col(RANK) <= self.k))


def _explode_to_search_pixels(order: int):
    """The ``mapInArrow`` function: one output row per (left row, search pixel), with unit vectors."""

    def explode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows, pixels = geometry.search_pixels(batch.column(HEALPIX_COLUMN).to_numpy(), order)
            xyz = geometry.unit_vectors(batch.column(RA).to_numpy(), batch.column(DEC).to_numpy())[rows]
            yield pa.RecordBatch.from_arrays(
                [batch.column(ROW).take(pa.array(rows)), pa.array(pixels), *(pa.array(xyz[:, i]) for i in range(3))],
                names=[ROW, _PIX, _X, _Y, _Z])

    return explode


def _sql_unit_vector(ra: str, dec: str, suffix: str):
    """``geometry.unit_vectors`` as Spark columns ``_xm_x<suffix>``, ``_xm_y<suffix>``, ``_xm_z<suffix>``."""
    from pyspark.sql import functions as F

    ra_rad, dec_rad = F.radians(ra), F.radians(dec)
    return [(F.cos(dec_rad) * F.cos(ra_rad)).alias(_X + suffix),
            (F.cos(dec_rad) * F.sin(ra_rad)).alias(_Y + suffix),
            F.sin(dec_rad).alias(_Z + suffix)]


def _sql_separation_arcsec():
    """``geometry.separation_arcsec`` between the left (``_xm_x``...) and right (``_xm_x_r``...) vectors."""
    from pyspark.sql import functions as F

    chord = F.sqrt(sum(((F.col(c) - F.col(c + "_r")) ** 2 for c in (_X, _Y, _Z)), F.lit(0.0)))
    return F.asin(F.least(chord / 2.0, F.lit(1.0))) * (2.0 * geometry.ARCSEC_PER_RAD)
