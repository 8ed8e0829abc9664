"""The crossmatch's math as pure numpy: unit vectors, separations, margin order, search regions.

Spark only schedules the pixels; every number the crossmatch produces comes from a function
here or from ``algorithm.py``. Neighbours inside a base pixel are bit arithmetic on the nested
index, and across a base pixel's edge HEALPix's own face tables (Healpix_Base::neighbors): no
healpy in the workers (its import, with matplotlib and astropy, costs a Spark worker ~1.4 CPU s).
"""

from __future__ import annotations

import math

import numpy as np

from photoz_spark.hats import HEALPIX_ORDER

ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0
# A pixel and its 8 neighbours cover every point within ~0.7 pixel sizes of the pixel (measured
# by sampling, worst case near the 8 vertices where only 3 base pixels meet and at the poles).
# Requiring 10x keeps a wide margin and keeps the candidate pairs per left row few.
PIXEL_SIZE_PER_RADIUS = 10.0
# HealpixMatch's cells: a left row's candidates are the right rows of its cell and the 8 around,
# which hold every point within ~0.7 cell sizes; 4 radii per cell keeps a wide margin (r <= 0.25
# cells) and few candidates per row (9 cells of 16 r^2 each).
CELL_SIZE_PER_RADIUS = 4.0


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
    return math.sqrt(4.0 * math.pi / (12 * 4**order)) * ARCSEC_PER_RAD


def auto_join_order(radius_arcsec: float, per_radius: float = PIXEL_SIZE_PER_RADIUS) -> int:
    """The finest HEALPix order whose pixel size is at least ``per_radius`` x radius.

    Args:
        radius_arcsec: the match radius, > 0.
        per_radius: pixel size in radii (``PIXEL_SIZE_PER_RADIUS`` for margins,
            ``CELL_SIZE_PER_RADIUS`` for HealpixMatch's cells).

    Returns:
        An order in 0..29 (29 for radii too small to matter).

    Raises:
        ValueError: if even order 0 is too fine (radius above ~5.9 deg).
    """
    need = per_radius * radius_arcsec
    if pixel_size_arcsec(0) < need:
        raise ValueError(f"radius {radius_arcsec} arcsec is too large for a pixel join: the largest is "
                         f"{pixel_size_arcsec(0) / per_radius:.0f} arcsec")
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
    ring = neighbours(pixels, order).ravel()
    return np.unique(ring[ring >= 0])  # -1: the missing 8th neighbour at the 8 vertices


_STEPS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
# Across a base pixel's edge (Healpix_Base::neighbors, HEALPix C++): a step leaving the base
# pixel by x (-1/+1) and y (-3/+3) lands in the direction 4 + those (0 = S, 4 = itself, 8 = N);
# _FACES[direction][base pixel] is the base pixel there (-1: none, the 7-neighbour vertices),
# _SWAPS[direction][base pixel row: north, equator, south] how x/y turn on the way (bit 1: x ->
# side-1-x, bit 2: y -> side-1-y, bit 4: swap x and y, in that order).
_FACES = np.array([[8, 9, 10, 11, -1, -1, -1, -1, 10, 11, 8, 9],
                   [5, 6, 7, 4, 8, 9, 10, 11, 9, 10, 11, 8],
                   [-1, -1, -1, -1, 5, 6, 7, 4, -1, -1, -1, -1],
                   [4, 5, 6, 7, 11, 8, 9, 10, 11, 8, 9, 10],
                   [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                   [1, 2, 3, 0, 0, 1, 2, 3, 5, 6, 7, 4],
                   [-1, -1, -1, -1, 7, 4, 5, 6, -1, -1, -1, -1],
                   [3, 0, 1, 2, 3, 0, 1, 2, 4, 5, 6, 7],
                   [2, 3, 0, 1, -1, -1, -1, -1, 0, 1, 2, 3]], dtype=np.int64)
_SWAPS = np.array([[0, 0, 3], [0, 0, 6], [0, 0, 0], [0, 0, 5], [0, 0, 0], [5, 0, 0], [0, 0, 0], [6, 0, 0],
                   [3, 0, 0]], dtype=np.int64)


def neighbours(pixels: np.ndarray, order: int) -> np.ndarray:
    """The 8 neighbours of nested pixels at ``order``: int64 (8, n), -1 where a vertex has only 7.

    In healpy's order (``get_all_neighbours``: SW, W, NW, N, NE, E, SE, S). Inside a base pixel
    the neighbours are the (x +- 1, y +- 1) of the nested index's interleaved bits; pixels on a
    base pixel's edge (4 / 2^order of them) step into the base pixel across by HEALPix's tables.
    """
    pixels = np.asarray(pixels, dtype=np.int64).ravel()
    side = np.int64(1) << order
    base = pixels >> 2 * order
    x, y = _deinterleave(pixels & ((np.int64(1) << 2 * order) - 1))
    out = np.empty((8, len(pixels)), dtype=np.int64)
    for i, (dx, dy) in enumerate(_STEPS):
        out[i] = (base << 2 * order) | _interleave(np.clip(x + dx, 0, side - 1), np.clip(y + dy, 0, side - 1))
    edge = np.flatnonzero((x == 0) | (y == 0) | (x == side - 1) | (y == side - 1))
    if len(edge):
        out[:, edge] = _across_edges(x[edge], y[edge], base[edge], order)
    return out


def _across_edges(x: np.ndarray, y: np.ndarray, base: np.ndarray, order: int) -> np.ndarray:
    """``neighbours`` of pixels on a base pixel's edge (local x, y and base pixel of each): (8, n)."""
    side = np.int64(1) << order
    out = np.empty((8, len(x)), dtype=np.int64)
    for i, (dx, dy) in enumerate(_STEPS):
        nx, ny = x + dx, y + dy
        direction = 4 + np.where(nx < 0, -1, np.where(nx >= side, 1, 0)) + np.where(ny < 0, -3,
                                                                                   np.where(ny >= side, 3, 0))
        nx, ny = nx % side, ny % side  # wrapped into the base pixel across
        face = _FACES[direction, base]
        bits = _SWAPS[direction, base >> 2]
        nx = np.where(bits & 1, side - nx - 1, nx)
        ny = np.where(bits & 2, side - ny - 1, ny)
        nx, ny = np.where(bits & 4, ny, nx), np.where(bits & 4, nx, ny)
        out[i] = np.where(face >= 0, (np.maximum(face, 0) << 2 * order) | _interleave(nx, ny), -1)
    return out


def _deinterleave(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of nested indices inside a base pixel: x from the even bits, y from the odd bits."""
    return _compact(local), _compact(local >> 1)


def _compact(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64) & np.uint64(0x5555555555555555)
    for shift, mask in ((1, 0x3333333333333333), (2, 0x0F0F0F0F0F0F0F0F), (4, 0x00FF00FF00FF00FF),
                        (8, 0x0000FFFF0000FFFF), (16, 0x00000000FFFFFFFF)):
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v.astype(np.int64)


def _interleave(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _spread(x) | (_spread(y) << 1)


def _spread(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64) & np.uint64(0x00000000FFFFFFFF)
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                        (2, 0x3333333333333333), (1, 0x5555555555555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v.astype(np.int64)


def cells_of(h29: np.ndarray, order: int) -> np.ndarray:
    """Nested pixel indices at ``order`` of order-29 indices (``_healpix_29``)."""
    return np.asarray(h29, dtype=np.int64) >> 2 * (HEALPIX_ORDER - order)


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
    return concatenated_ranges(first[keep], (last - first)[keep])


def concatenated_ranges(first: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(f, f + n) for f, n in zip(first, lengths)])`` without a Python loop.

    Args:
        first: int64 start of each range.
        lengths: int64 length of each (>= 0).

    Returns:
        int64 indices, range after range.
    """
    keep = lengths > 0
    first, lengths = np.asarray(first, dtype=np.int64)[keep], np.asarray(lengths, dtype=np.int64)[keep]
    if not len(first):
        return np.zeros(0, dtype=np.int64)
    # The start of each run, then +1 steps: a cumulative sum.
    steps = np.ones(lengths.sum(), dtype=np.int64)
    heads = np.cumsum(lengths) - lengths
    steps[heads[1:]] = first[1:] - (first[:-1] + lengths[:-1] - 1)
    steps[0] = first[0]
    return np.cumsum(steps)


def chord_separation_arcsec(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``separation_arcsec`` from unit vectors already computed, row by row ((n, 3) each)."""
    chord = np.sqrt(((u - v) ** 2).sum(axis=-1))
    return 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0)) * ARCSEC_PER_RAD
