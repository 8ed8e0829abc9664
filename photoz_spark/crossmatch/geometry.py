"""The crossmatch's math as pure numpy: unit vectors, separations, join order, search pixels.

Spark only moves rows around; every number the crossmatch produces comes from a function here
(or from its Spark SQL transcription in ``algorithm.py``, tested against these).
"""

from __future__ import annotations

import math

import healpy as hp
import numpy as np

from photoz_spark.hats import HEALPIX_ORDER, pixel_at_order

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
    chord = np.linalg.norm(unit_vectors(ra1, dec1) - unit_vectors(ra2, dec2), axis=-1)
    return 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0)) * ARCSEC_PER_RAD


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


def search_pixels(h29, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The order-``order`` pixels where a left row looks for counterparts: its own and its neighbours.

    Args:
        h29: order-29 nested indices of the left rows.
        order: the join order.

    Returns:
        (row, pixel): int64 arrays of equal length, row indexing ``h29``; up to 9 distinct
        pixels per row (healpy marks the missing 8th neighbour at 8 sky vertices with -1,
        which is dropped).
    """
    own = pixel_at_order(h29, order)
    if len(own) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    neighbours = hp.get_all_neighbours(2**order, own, nest=True)  # (8, n)
    block = np.vstack([own[None, :], neighbours]).astype(np.int64)  # (9, n)
    rows = np.broadcast_to(np.arange(len(own), dtype=np.int64), block.shape)
    keep = block >= 0
    # Column-major flattening keeps each row's pixels together (order of output rows is free).
    return rows.T[keep.T], block.T[keep.T]
