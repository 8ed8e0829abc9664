"""Galactic (Milky Way) dust in front of every simulated source, and how catalogs report it.

No dust map can be downloaded here, so E(B-V) is a smooth analytic function of position: a
plane-parallel (cosecant) slab in Galactic latitude times a log-normal field of clouds on
~2-30 degree scales. The field is a fixed sum of plane waves on the sphere drawn once from the
sky seed, so it is the same function in every pixel and every task (pixels stay independent).
The E(B-V) is on the SFD (Schlegel, Finkbeiner & Davis 1998) scale, as DESI LS ``EBV`` is.
"""

from __future__ import annotations

from functools import lru_cache

import healpy as hp
import numpy as np

N_WAVES = 48
WAVENUMBER_RANGE = (12.0, 180.0)   # rad^-1 on the unit sphere: wavelengths ~30 deg down to 2 deg
MAP_ORDER = 8                      # HEALPix order the map is evaluated at (14 arcmin cells)


@lru_cache(maxsize=4)
def _waves(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([int(seed), 0xD057])
    direction = rng.normal(size=(N_WAVES, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = np.exp(rng.uniform(*np.log(WAVENUMBER_RANGE), N_WAVES))
    return direction * k[:, None], rng.uniform(0.0, 2.0 * np.pi, N_WAVES)


def galactic_latitude(ra, dec) -> np.ndarray:
    """Galactic latitude b (deg) of ICRS positions (deg)."""
    _, b = hp.Rotator(coord=["C", "G"])(np.asarray(ra, float), np.asarray(dec, float), lonlat=True)
    return np.asarray(b)


def ebv_sfd(ra, dec, seed: int, ebv_pole: float, structure_sigma_ln: float) -> np.ndarray:
    """E(B-V) on the SFD scale: ebv_pole / sin|b| (a dust slab) times log-normal clouds.

    Args:
        ra, dec: positions (deg).
        seed: the sky seed (fixes the cloud field, the same everywhere).
        ebv_pole: E(B-V) towards the Galactic poles.
        structure_sigma_ln: rms of ln E(B-V) about the slab (0: a smooth slab).
    Returns:
        E(B-V) per position (mag).
    """
    # Evaluated at the centre of each position's HEALPix cell (order 8, 14'): the map has no
    # structure below ~2 deg, and a pixel's tens of thousands of sources share a few dozen cells.
    cells = hp.ang2pix(2 ** MAP_ORDER, np.asarray(ra, float), np.asarray(dec, float), nest=True, lonlat=True)
    unique, back = np.unique(cells, return_inverse=True)
    c_ra, c_dec = hp.pix2ang(2 ** MAP_ORDER, unique, nest=True, lonlat=True)
    return _ebv_exact(c_ra, c_dec, seed, ebv_pole, structure_sigma_ln)[back].reshape(np.shape(cells))


def _ebv_exact(ra, dec, seed: int, ebv_pole: float, structure_sigma_ln: float) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    xyz = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)
    k, phase = _waves(seed)
    field = np.sqrt(2.0 / N_WAVES) * np.cos(xyz @ k.T + phase).sum(axis=-1)  # ~N(0, 1)
    sin_b = np.abs(np.sin(np.radians(galactic_latitude(np.degrees(ra), np.degrees(dec)))))
    slab = ebv_pole / np.maximum(sin_b, 0.05)
    return slab * np.exp(structure_sigma_ln * field - 0.5 * structure_sigma_ln ** 2)


def transmission(ebv, r_coeff) -> np.ndarray:
    """10^(-0.4 R E(B-V)): the flux fraction that gets through (arrays broadcast)."""
    return 10.0 ** (-0.4 * np.asarray(r_coeff) * np.asarray(ebv))
