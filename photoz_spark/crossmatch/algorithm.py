"""Crossmatch algorithms: given left and right positions, each left row's nearest right rows.

One small class per algorithm behind ``CrossmatchAlgorithm`` (as LSDB's ``core/crossmatch``
does), so another method (a probabilistic one, a proper-motion-aware one) can be added without
touching the job. An algorithm sees plain arrays (``Sky``: positions and their order-29 HEALPix
index): one left batch and the right rows of the sky around it (``run.py`` reads them pixel by
pixel, see ``geometry.search_region``), and returns index pairs; it never sees Spark. Both
algorithms give the same answer row for row (candidates differ, the exact test and the ranking
are shared); ``crossmatch.algorithm`` chooses.

``HealpixMatch`` (default): sorted HEALPix cells, no tree
-----------------------------------------------------------
The right rows arrive sorted by ``_healpix_29`` (HATS files are), so their cell at a coarse
``cell order`` (cells >= ``geometry.CELL_SIZE_PER_RADIUS`` radii wide) is a sorted array: a left
row's candidates are the right rows of its cell and the cell's 8 neighbours, found by binary
search (9 ranges per distinct left cell). A cell and its neighbours cover every point within
~0.7 cell sizes, so no counterpart is missed. Nothing is built per right row (no tree, no unit
vectors): only candidate pairs get unit vectors and exact separations. Cost ~ left rows x
candidates per row, plus one pass over the right cells.

``KdTreeMatch``: a k-d tree on unit vectors (as astropy and LSDB)
----------------------------------------------------------------
The right rows of a left pixel's search region go into a ``scipy.spatial.cKDTree`` of unit
vectors; a left row's candidates are the right rows within the chord of the radius. Working on
the unit sphere has no RA wrap and no pole singularity. Separations are then recomputed exactly
(``geometry.separation_arcsec``'s chord formula) and candidates ranked by (separation, right id),
so ties go to the lower id whatever the tree's visiting order.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from photoz_spark.crossmatch import geometry
from photoz_spark.hats import HEALPIX_ORDER

# Rows per tree query: all candidates of rows with up to this many are fetched in one call.
_FIRST_QUERY_K = 4


@dataclass(frozen=True)
class Matches:
    """The k nearest right rows within the radius of each left row.

    Attributes:
        left: int64 index of the left row of each match, ascending; a left row's matches are
            adjacent, nearest first.
        right: int64 index of the right row.
        sep_arcsec: float64 separation.
        rank: int32, 1 for the nearest (ties: lower right id first).
        n_candidates: int32 per left row (length of the left input): right rows within the radius.
    """

    left: np.ndarray
    right: np.ndarray
    sep_arcsec: np.ndarray
    rank: np.ndarray
    n_candidates: np.ndarray


@dataclass(frozen=True)
class Sky:
    """Positions of catalog rows: RA/Dec in degrees (finite, valid) and their order-29 HEALPix index.

    Attributes:
        ra, dec: float64 degrees.
        h29: int64 nested order-29 index of each row (``_healpix_29``: HATS's position of the
            row, which also decides the file and task it is in); for right rows sorted when they
            come from HATS files in pixel order. ``KdTreeMatch`` does not need it.
    """

    ra: np.ndarray
    dec: np.ndarray
    h29: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ra)

    def xyz(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Unit vectors of all rows, or of ``rows`` (indices, repeats allowed)."""
        if rows is None:
            return geometry.unit_vectors(self.ra, self.dec)
        return geometry.unit_vectors(self.ra[rows], self.dec[rows])


class CrossmatchAlgorithm(ABC):
    """Finds, for every left row, the ``k`` nearest right rows within ``radius_arcsec``.

    Args:
        radius_arcsec: the match radius, > 0.
        k: how many counterparts to keep per left row, >= 1.
        join_order: the HEALPix order of the search margin around each left pixel (its ring of
            neighbour pixels at this order, ``geometry.search_region``); None: the finest order
            whose pixels are at least ``geometry.PIXEL_SIZE_PER_RADIUS`` radii wide.
    """

    name = "abstract"

    def __init__(self, radius_arcsec: float, k: int, join_order: int | None = None):
        self.radius_arcsec = float(radius_arcsec)
        self.k = int(k)
        self.join_order = join_order

    def validate(self) -> None:
        """Refuse settings the algorithm cannot honour (ValueError saying what to change)."""
        if not (np.isfinite(self.radius_arcsec) and self.radius_arcsec > 0):
            raise ValueError(f"crossmatch.radius_arcsec must be > 0, got {self.radius_arcsec}")
        if self.k < 1:
            raise ValueError(f"crossmatch.k must be >= 1, got {self.k}")
        auto = geometry.auto_join_order(self.radius_arcsec)  # raises for a radius that is too large
        if self.join_order is None:
            self.join_order = auto
        elif not 0 <= self.join_order <= auto:
            raise ValueError(
                f"crossmatch.join_order={self.join_order} is too fine for a {self.radius_arcsec} arcsec radius "
                f"(pixel size must be >= {geometry.PIXEL_SIZE_PER_RADIUS:g} x radius); use 0..{auto} or auto")

    def properties(self) -> dict:
        """The settings to record in the output catalog (keys without a prefix)."""
        return {"algorithm": self.name, "radius_arcsec": self.radius_arcsec, "k": self.k,
                "join_order": self.join_order}

    def match(self, left: Sky, right: Sky, right_order: np.ndarray, prepared=None) -> Matches:
        """Candidates within the radius, ranked.

        Args:
            left: the left rows with valid coordinates.
            right: the right rows around them (finite coordinates).
            right_order: (m,) the right rows' rank by id, which breaks ties in separation.
            prepared: ``prepare(right)``'s result, when the same right rows serve many batches.

        Returns:
            The Matches (``rank <= k``).
        """
        n = len(left)
        if prepared is None:
            prepared = self.prepare(right)
        if len(right) == 0 or n == 0:
            left_rows = right_rows = np.zeros(0, dtype=np.int64)
        else:
            left_rows, right_rows = self._candidates(left, right, prepared)
        # The exact test: chord separations from unit vectors of the candidate pairs only.
        left_xyz = left.xyz()
        sep = geometry.chord_separation_arcsec(left_xyz[left_rows], right.xyz(right_rows))
        return self._ranked(left_rows, right_rows, sep, right_order, n)

    @abstractmethod
    def prepare(self, right: Sky):
        """What is built once from the right rows and reused for every left batch."""

    @abstractmethod
    def _candidates(self, left: Sky, right: Sky, prepared) -> tuple[np.ndarray, np.ndarray]:
        """(left row, right row) int64 pairs: every pair within the radius, and maybe others."""

    def _ranked(self, left: np.ndarray, right: np.ndarray, sep: np.ndarray, right_order: np.ndarray,
                n: int) -> Matches:
        """Pairs within the radius, ranked per left row by (separation, right id); the k first kept."""
        within = sep <= self.radius_arcsec
        left, right, sep = left[within], right[within], sep[within]
        order = np.lexsort((right_order[right], sep, left))  # per left row: nearest, then lower id
        left, right, sep = left[order], right[order], sep[order]
        counts = np.bincount(left, minlength=n).astype(np.int32)
        starts = np.cumsum(counts) - counts
        rank = (np.arange(len(left)) - starts[left] + 1).astype(np.int32)
        keep = rank <= self.k
        return Matches(left[keep], right[keep], sep[keep], rank[keep], counts)


class HealpixMatch(CrossmatchAlgorithm):
    """Candidates from the right rows' sorted HEALPix cells (module docstring)."""

    name = "healpix"

    @property
    def cell_order(self) -> int:
        """The order of the cells: the finest whose pixels are ``CELL_SIZE_PER_RADIUS`` radii wide."""
        return geometry.auto_join_order(self.radius_arcsec, geometry.CELL_SIZE_PER_RADIUS)

    def properties(self) -> dict:
        return {**super().properties(), "cell_order": self.cell_order}

    def prepare(self, right: Sky) -> tuple[np.ndarray, np.ndarray | None]:
        """The right rows' cells, sorted, and the right row of each (None: already in order)."""
        cells = right.h29 >> 2 * (HEALPIX_ORDER - self.cell_order)
        if len(cells) < 2 or np.all(cells[1:] >= cells[:-1]):
            return cells, None
        rows = np.argsort(cells, kind="stable")
        return cells[rows], rows

    def _candidates(self, left: Sky, right: Sky, prepared) -> tuple[np.ndarray, np.ndarray]:
        cells, rows = prepared
        order = self.cell_order
        own, at = np.unique(geometry.cells_of(left.h29, order), return_inverse=True)
        around = np.concatenate([own[:, None], geometry.neighbours(own, order).T], axis=1)
        around.sort(axis=1)  # a cell twice (only at the coarsest orders) is searched once
        around[:, 1:][around[:, 1:] == around[:, :-1]] = -1
        flat = around.ravel()
        sorter = np.argsort(flat, kind="stable")  # binary searches of sorted keys stay in cache
        first, last = np.empty_like(flat), np.empty_like(flat)
        first[sorter] = np.searchsorted(cells, flat[sorter], side="left")
        last[sorter] = np.searchsorted(cells, flat[sorter], side="right")
        last[flat < 0] = first[flat < 0]  # a missing neighbour (-1): no rows
        first, lengths = first.reshape(around.shape)[at], (last - first).reshape(around.shape)[at]
        per_row = lengths.sum(axis=1)
        left_rows = np.repeat(np.arange(len(left), dtype=np.int64), per_row)
        right_rows = geometry.concatenated_ranges(first.ravel(), lengths.ravel())
        return left_rows, right_rows if rows is None else rows[right_rows]


class KdTreeMatch(CrossmatchAlgorithm):
    """Nearest neighbours by a k-d tree on unit vectors (module docstring)."""

    name = "kdtree"

    def prepare(self, right: Sky):
        from scipy.spatial import cKDTree

        return cKDTree(right.xyz(), balanced_tree=False, compact_nodes=False) if len(right) else None

    def _candidates(self, left: Sky, right: Sky, tree) -> tuple[np.ndarray, np.ndarray]:
        # The chord of the radius, a hair wider: the exact test decides.
        chord = 2.0 * math.sin(self.radius_arcsec / geometry.ARCSEC_PER_RAD / 2.0) * (1.0 + 1e-9)
        return self._tree_pairs(tree, left.xyz(), chord, len(right))

    @staticmethod
    def _tree_pairs(tree, left_xyz: np.ndarray, chord: float, n_right: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (left, right) pair within ``chord``: a k-nearest query with k from a count per row.

        Most rows have 0 or 1 candidate; the few in crowded places are queried again with k
        large enough for all of theirs, so no row's list is cut short.
        """
        counts = tree.query_ball_point(left_xyz, chord, return_length=True)
        lefts, rights = [], []
        rows = np.flatnonzero(counts > 0)
        k = _FIRST_QUERY_K
        while len(rows):
            k_here = min(k, n_right)
            batch = rows[counts[rows] <= k_here] if k_here < n_right else rows
            _, idx = tree.query(left_xyz[batch], k=k_here, distance_upper_bound=chord * (1.0 + 1e-9))
            idx = idx.reshape(len(batch), k_here)
            found = idx < n_right
            lefts.append(np.broadcast_to(batch[:, None], idx.shape)[found])
            rights.append(idx[found])
            rows = np.setdiff1d(rows, batch, assume_unique=True)
            k *= 8
        if not lefts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64)
