"""Intergalactic HI absorption after Inoue et al. (2014, MNRAS 442, 1805).

The analytic mean optical depths (Lyman series of the Lyman-alpha forest and DLA
components, Lyman continuum of the forest component) follow the paper's equations as
implemented in eazy-py's ``igm.Inoue14`` (MIT licence); the coefficient tables ship in
``data/``. The Lyman continuum of the DLA component -- absorbers with N_HI >~ 10^17 that are
rare enough to differ from sightline to sightline -- is *not* applied as a mean here:
``sky.py`` places discrete Lyman-limit systems on each sightline instead (``lls_cut``).
Sightline-to-sightline scatter of the forest is a per-object scale on tau.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from photoz_spark.sim.sed import DATA_DIR, LYMAN_LIMIT

Z1_LAF, Z2_LAF, Z1_DLA = 1.2, 4.7, 2.0


@lru_cache(maxsize=1)
def _coefficients():
    laf = np.loadtxt(DATA_DIR / "inoue2014_LAFcoeff.txt")
    dla = np.loadtxt(DATA_DIR / "inoue2014_DLAcoeff.txt")
    return laf[:, 1][:, None], laf[:, 2:5].T[..., None], dla[:, 2:4].T[..., None]


def tau_lyman_series(z_source: float, lam_obs: np.ndarray) -> np.ndarray:
    """Lyman-series optical depth (forest + DLA components) at observed wavelengths (A)."""
    lam, a_laf, a_dla = _coefficients()
    x = lam_obs[None, :]
    below = x < lam * (1.0 + z_source)
    laf = np.where(x < lam * (1 + Z1_LAF), a_laf[0] * (x / lam) ** 1.2,
                   np.where(x < lam * (1 + Z2_LAF), a_laf[1] * (x / lam) ** 3.7, a_laf[2] * (x / lam) ** 5.5))
    dla = np.where(x < lam * (1 + Z1_DLA), a_dla[0] * (x / lam) ** 2.0, a_dla[1] * (x / lam) ** 3.0)
    return np.sum(np.where(below, laf + dla, 0.0), axis=0)


def tau_lyman_continuum_forest(z_source: float, lam_obs: np.ndarray) -> np.ndarray:
    """Lyman-continuum optical depth of the Lyman-alpha-forest component."""
    x = lam_obs / LYMAN_LIMIT
    zs1 = 1.0 + z_source
    if z_source < Z1_LAF:
        tau = 0.3248 * (x ** 1.2 - zs1 ** -0.9 * x ** 2.1)
    elif z_source < Z2_LAF:
        tau = np.where(
            x >= 1 + Z1_LAF,
            2.545e-2 * (zs1 ** 1.6 * x ** 2.1 - x ** 3.7),
            2.545e-2 * zs1 ** 1.6 * x ** 2.1 + 0.3248 * x ** 1.2 - 0.2496 * x ** 2.1,
        )
    else:
        tau = np.where(
            x > 1 + Z2_LAF,
            5.221e-4 * (zs1 ** 3.4 * x ** 2.1 - x ** 5.5),
            np.where(
                x >= 1 + Z1_LAF,
                5.221e-4 * zs1 ** 3.4 * x ** 2.1 + 0.2182 * x ** 2.1 - 2.545e-2 * x ** 3.7,
                5.221e-4 * zs1 ** 3.4 * x ** 2.1 + 0.3248 * x ** 1.2 - 3.140e-2 * x ** 2.1,
            ),
        )
    return np.where(x < zs1, np.clip(tau, 0.0, None), 0.0)


def tau_igm(z_source: float, lam_obs: np.ndarray) -> np.ndarray:
    """Mean IGM optical depth without the DLA component's Lyman continuum (see module doc)."""
    lam_obs = np.asarray(lam_obs, float)
    return tau_lyman_series(z_source, lam_obs) + tau_lyman_continuum_forest(z_source, lam_obs)


def lls_incidence(z: np.ndarray) -> np.ndarray:
    """Lyman-limit systems (tau_912 >~ 1) per unit redshift: 0.28 (1+z)^1.19.

    Ribaudo et al. (2011) at z < 2.6, and consistent with Prochaska et al. (2010) at z ~ 3.7.
    """
    return 0.28 * (1.0 + np.asarray(z)) ** 1.19


def lls_cumulative(z: np.ndarray) -> np.ndarray:
    """Integral of ``lls_incidence`` from 0 to z."""
    return 0.28 / 2.19 * ((1.0 + np.asarray(z)) ** 2.19 - 1.0)


def draw_nearest_lls(z_source: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Redshift of the highest-z Lyman-limit system on each sightline (NaN where there is none).

    Only the highest-z system matters for broad-band photometry: it is opaque below its
    Lyman limit, which hides every lower-z system's limit.
    """
    z_source = np.asarray(z_source, float)
    total = scale * lls_cumulative(z_source)
    u = rng.random(z_source.shape)
    has = u > np.exp(-total)
    # P(no system in (y, z_s)) = exp(-(L(z_s) - L(y))) = u  =>  L(y) = L(z_s) + ln u / scale
    target = np.where(has, lls_cumulative(z_source) + np.log(np.where(has, u, 1.0)) / scale, 0.0)
    y = (target * 2.19 / 0.28 + 1.0) ** (1.0 / 2.19) - 1.0
    return np.where(has, np.clip(y, 0.0, z_source), np.nan)
