"""Crossmatch algorithms: given left and right positions, each left row's nearest right rows.

One small class per algorithm behind ``CrossmatchAlgorithm`` (as LSDB's ``core/crossmatch``
does), so another method (a probabilistic one, a proper-motion-aware one) can be added without
touching the job. An algorithm sees plain arrays: one left batch and the right rows of the sky
around it (``run.py`` reads them pixel by pixel, see ``geometry.search_region``), and returns
index pairs; it never sees Spark.

``KdTreeMatch``: a k-d tree on unit vectors (as astropy and LSDB), with exact separations
-------------------------------------------------------------------------------------------
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

    @abstractmethod
    def match(self, left_xyz: np.ndarray, right_xyz: np.ndarray, right_order: np.ndarray,
              tree=None) -> Matches:
        """Candidates within the radius, ranked.

        Args:
            left_xyz: (n, 3) unit vectors of left rows with valid coordinates.
            right_xyz: (m, 3) unit vectors of the right rows around them (finite).
            right_order: (m,) the right rows' rank by id, which breaks ties in separation.
            tree: ``prepare(right_xyz)``'s result, when the same right rows serve many batches.

        Returns:
            The Matches (``rank <= k``).
        """

    def prepare(self, right_xyz: np.ndarray):
        """Anything built once from the right rows and reused for every left batch (None here)."""


class KdTreeMatch(CrossmatchAlgorithm):
    """Nearest neighbours by a k-d tree on unit vectors (module docstring)."""

    name = "kdtree"

    def prepare(self, right_xyz: np.ndarray):
        from scipy.spatial import cKDTree

        return cKDTree(right_xyz, balanced_tree=False, compact_nodes=False) if len(right_xyz) else None

    def match(self, left_xyz, right_xyz, right_order, tree=None) -> Matches:
        n = len(left_xyz)
        if tree is None:
            tree = self.prepare(right_xyz)
        if tree is None or n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return Matches(empty, empty, np.zeros(0), np.zeros(0, dtype=np.int32), np.zeros(n, dtype=np.int32))
        # The chord of the radius, a hair wider: the exact test below decides.
        chord = 2.0 * math.sin(self.radius_arcsec / geometry.ARCSEC_PER_RAD / 2.0) * (1.0 + 1e-9)
        left, right = self._candidates(tree, left_xyz, chord, len(right_xyz))
        sep = geometry.chord_separation_arcsec(left_xyz[left], right_xyz[right])
        within = sep <= self.radius_arcsec
        left, right, sep = left[within], right[within], sep[within]
        order = np.lexsort((right_order[right], sep, left))  # per left row: nearest, then lower id
        left, right, sep = left[order], right[order], sep[order]
        counts = np.bincount(left, minlength=n).astype(np.int32)
        starts = np.cumsum(counts) - counts
        rank = (np.arange(len(left)) - starts[left] + 1).astype(np.int32)
        keep = rank <= self.k
        return Matches(left[keep], right[keep], sep[keep], rank[keep], counts)

    @staticmethod
    def _candidates(tree, left_xyz: np.ndarray, chord: float, n_right: int) -> tuple[np.ndarray, np.ndarray]:
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
