"""The crossmatch's math as pure numpy: unit vectors, separations, margin order, search regions.

Spark only schedules the pixels; every number the crossmatch produces comes from a function
here or from ``algorithm.py``.
"""

from __future__ import annotations

import math

import healpy as hp
import numpy as np

from photoz_spark.hats import HEALPIX_ORDER

ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0
# A pixel and its 8 neighbours cover every point within ~0.7 pixel sizes of the pixel (measured
# by sampling, worst case near the 8 vertices where only 3 base pixels meet and at the poles).
# Requiring 10x keeps a wide margin and keeps the candidate pairs per left row few.
PIXEL_SIZE_PER_RADIUS = 10.0


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """Cartesian unit vectors of sky positions.

    Args:
        ra_deg: right ascension in degrees.
        dec_deg: declination in degrees.

    Returns:
        float64 array of shape (n, 3).
    """
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in arcsec, ``2 asin(|u - v| / 2)`` from unit vectors.

    The chord formula keeps full double precision at sub-milliarcsecond separations, where the
    textbook ``acos(u . v)`` loses everything (cos of 1 mas is 1 - 1e-17).

    Args:
        ra1, dec1: first positions, degrees.
        ra2, dec2: second positions, degrees (broadcast against the first).

    Returns:
        float64 separations in arcsec (NaN where a coordinate is NaN).
    """
    return chord_separation_arcsec(unit_vectors(ra1, dec1), unit_vectors(ra2, dec2))


def valid_coords(ra_deg, dec_deg) -> np.ndarray:
    """True where RA is in [0, 360) and Dec in [-90, 90] (NaN is invalid): Flag.BAD_COORDS's test."""
    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    return (ra >= 0.0) & (ra < 360.0) & (dec >= -90.0) & (dec <= 90.0)


def pixel_size_arcsec(order: int) -> float:
    """The side of a HEALPix pixel at ``order``: the square root of its area, in arcsec."""
    return math.sqrt(hp.nside2pixarea(2**order)) * ARCSEC_PER_RAD


def auto_join_order(radius_arcsec: float) -> int:
    """The finest HEALPix order whose pixel size is at least ``PIXEL_SIZE_PER_RADIUS`` x radius.

    Args:
        radius_arcsec: the match radius, > 0.

    Returns:
        An order in 0..29 (29 for radii too small to matter).

    Raises:
        ValueError: if even order 0 is too fine (radius above ~5.9 deg).
    """
    need = PIXEL_SIZE_PER_RADIUS * radius_arcsec
    if pixel_size_arcsec(0) < need:
        raise ValueError(f"radius {radius_arcsec} arcsec is too large for a pixel join: the largest is "
                         f"{pixel_size_arcsec(0) / PIXEL_SIZE_PER_RADIUS:.0f} arcsec")
    # Pixel size halves with each order: solve, then step back over rounding.
    order = min(HEALPIX_ORDER, math.floor(math.log2(pixel_size_arcsec(0) / need)))
    while order > 0 and pixel_size_arcsec(order) < need:
        order -= 1
    return order


# A left pixel's margin ring is computed at most this many orders below it (4 * 2^10 boundary
# pixels): a finer margin order would only shave a thinner ring at a higher planning cost.
MAX_MARGIN_DEPTH = 10


def search_region(npix: int, order: int, margin_order: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the rows of one pixel look for counterparts: the pixel and a margin ring around it.

    The ring is the neighbours at ``margin_order`` of the pixel's boundary pixels at that order
    (or, when ``margin_order`` is coarser than ``order``, the enclosing pixel and its neighbours).
    A pixel and its neighbours cover every point within ~0.7 pixel sizes of it (HEALPix's own
    neighbourhoods: across RA 0/360, at the poles and at the 8 vertices where only 3 base
    pixels meet), so with pixels >= ``PIXEL_SIZE_PER_RADIUS`` radii wide every counterpart of
    every row of the pixel is inside the region.

    Args:
        npix: the nested pixel index at ``order``.
        order: the pixel's HEALPix order.
        margin_order: the order of the ring (``auto_join_order`` of the radius, or coarser).

    Returns:
        (lo, hi): sorted, disjoint order-29 index intervals ``[lo, hi)`` covering the region.
    """
    margin_order = min(margin_order, order + MAX_MARGIN_DEPTH)
    if margin_order >= order:
        own = np.array([npix], dtype=np.int64) << 2 * (margin_order - order)
        width = np.int64(1) << 2 * (margin_order - order)
        ring = _neighbours(_boundary_children(npix, margin_order - order), margin_order)
        lo = np.concatenate([own, ring]) << 2 * (HEALPIX_ORDER - margin_order)
        hi = np.concatenate([own + width, ring + 1]) << 2 * (HEALPIX_ORDER - margin_order)
    else:
        parent = np.array([npix >> 2 * (order - margin_order)], dtype=np.int64)
        pixels = np.concatenate([parent, _neighbours(parent, margin_order)])
        lo, hi = pixels << 2 * (HEALPIX_ORDER - margin_order), (pixels + 1) << 2 * (HEALPIX_ORDER - margin_order)
    return _merge(lo, hi)


def _boundary_children(npix: int, depth: int) -> np.ndarray:
    """The pixels ``depth`` orders below ``npix`` along its four edges (nested: x/y bits interleaved)."""
    side = 1 << depth
    t = np.arange(side, dtype=np.int64)
    edge = np.full(side, side - 1, dtype=np.int64)
    x = np.concatenate([t, t, np.zeros(side, dtype=np.int64), edge])
    y = np.concatenate([np.zeros(side, dtype=np.int64), edge, t, t])
    offset = np.zeros_like(x)
    for bit in range(depth):
        offset |= ((x >> bit) & 1) << (2 * bit) | ((y >> bit) & 1) << (2 * bit + 1)
    return (np.int64(npix) << 2 * depth) + np.unique(offset)


def _neighbours(pixels: np.ndarray, order: int) -> np.ndarray:
    ring = np.asarray(hp.get_all_neighbours(2**order, pixels, nest=True), dtype=np.int64).ravel()
    return np.unique(ring[ring >= 0])  # -1: the missing 8th neighbour at the 8 vertices


def _merge(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted disjoint intervals from overlapping or touching ones (nested ranges never cross)."""
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    hi = np.maximum.accumulate(hi)
    starts = np.r_[True, lo[1:] > hi[:-1]]
    ends = np.r_[starts[1:], True]
    return lo[starts], hi[ends]


def pixels_in_region(npixs: np.ndarray, order: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The pixels of a catalog (sorted, at ``order``) that overlap a region from ``search_region``.

    Args:
        npixs: the catalog's sorted pixel indices.
        order: their HEALPix order (any: coarser or finer than the region's).
        lo, hi: the region's order-29 intervals.

    Returns:
        The overlapping pixels, sorted.
    """
    shift = 2 * (HEALPIX_ORDER - order)
    starts, ends = npixs << shift, (npixs + 1) << shift
    first = np.searchsorted(ends, lo, side="right")  # first pixel ending after the interval starts
    last = np.searchsorted(starts, hi, side="left")  # first pixel starting at or after its end
    hit = np.zeros(len(npixs) + 1, dtype=np.int64)
    np.add.at(hit, first, 1)
    np.add.at(hit, last, -1)
    return npixs[np.cumsum(hit)[:-1] > 0]


def in_region(h29: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """True for order-29 indices inside the region's intervals."""
    i = np.searchsorted(lo, h29, side="right") - 1
    return (i >= 0) & (h29 < hi[np.maximum(i, 0)])


def sorted_region_rows(h29_sorted: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``in_region``'s row indices for a sorted column: a binary search per interval, not per row."""
    first = np.searchsorted(h29_sorted, lo, side="left")
    last = np.searchsorted(h29_sorted, hi, side="left")
    keep = last > first
    if not keep.any():
        return np.zeros(0, dtype=np.int64)
    first, last = first[keep], last[keep]
    lengths = last - first
    # Concatenated aranges: the start of each run, then +1 steps.
    steps = np.ones(lengths.sum(), dtype=np.int64)
    heads = np.cumsum(lengths) - lengths
    steps[heads] = first - np.r_[0, last[:-1] - 1]
    steps[0] = first[0]
    return np.cumsum(steps)


def chord_separation_arcsec(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``separation_arcsec`` from unit vectors already computed, row by row ((n, 3) each)."""
    chord = np.sqrt(((u - v) ** 2).sum(axis=-1))
    return 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0)) * ARCSEC_PER_RAD
