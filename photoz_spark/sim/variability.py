"""Quasar variability: a damped random walk per quasar, seen at each survey's epochs.

The surveys did not see the same quasar SED: SDSS imaged it in 2000-2008, GALEX in
2003-2011, the DESI Legacy Surveys in 2014-2019 (g, r and z on different nights), and unWISE
stacks a decade of WISE/NEOWISE visits. Each quasar's magnitude is a damped random walk
(Ornstein-Uhlenbeck process, Kelly et al. 2009) whose long-term structure function SF_inf and
rest-frame damping time tau follow the SDSS Stripe 82 fits of MacLeod et al. (2010, ApJ 721,
1014; eq. 7 with Table 1):

    log10 f = A + B log10(lambda_rest / 4000 A) + C (M_i + 23) + D log10(M_BH / 1e9 M_sun) + E log10(1 + z)

    SF_inf (mag): A = -0.51, B = -0.479, C = 0.131, D = 0.18, E = 0
    tau (days, rest frame): A = 2.4, B = 0.17, C = 0.03, D = 0.21, E = 0

One latent process per quasar drives all bands (variability is coherent across the optical;
its amplitude grows to the blue through the B term: bluer when brighter). The process has
variance SF_inf^2 / 2 (two epochs far apart differ by SF_inf rms, MacLeod et al. eq. 4).
"""

from __future__ import annotations

import numpy as np

SF_COEFFS = (-0.51, -0.479, 0.131, 0.18, 0.0)    # MacLeod et al. (2010) eq. 7, Table 1: SF_inf
TAU_COEFFS = (2.4, 0.17, 0.03, 0.21, 0.0)        # the same for tau (rest-frame days)
# Black-hole mass at given M_i: log10 M_BH = 2.0 - 0.27 M_i with scatter 0.58 + 0.011 M_i dex,
# the M_BH-M_i relation of SDSS quasars' virial masses used with these fits in LSST-style AGN
# simulations (M_i = -26 -> 10^9.0 M_sun +- 0.3 dex; Shen et al. 2011 DR7 masses agree). An
# approximation: only SF_inf's weak D term (0.18) and tau's (0.21) feel it.
MBH_INTERCEPT, MBH_SLOPE = 2.0, -0.27
MBH_SCATTER_INTERCEPT, MBH_SCATTER_SLOPE = 0.58, 0.011
# Outside 1000-10000 A rest the Stripe 82 fits are extrapolations (and beyond 1 um the light
# is hot dust, reprocessed with long lags): the amplitude is held at its value at the ends.
LAMBDA_RANGE = (1000.0, 10000.0)
DAYS_PER_YEAR = 365.25


def draw_log_black_hole_mass(rng, m_i) -> np.ndarray:
    """log10 M_BH / M_sun for quasars of absolute magnitude M_i (MacLeod et al. 2010)."""
    m_i = np.asarray(m_i, float)
    scatter = np.clip(MBH_SCATTER_INTERCEPT + MBH_SCATTER_SLOPE * m_i, 0.1, None)
    return MBH_INTERCEPT + MBH_SLOPE * m_i + scatter * rng.normal(0.0, 1.0, m_i.shape)


def _macleod(coeffs, lambda_rest, m_i, log_mbh, z) -> np.ndarray:
    a, b, c, d, e = coeffs
    lam = np.clip(lambda_rest, *LAMBDA_RANGE)
    return 10.0 ** (a + b * np.log10(lam / 4000.0) + c * (m_i + 23.0) + d * (log_mbh - 9.0)
                    + e * np.log10(1.0 + z))


def structure_function_inf(lambda_rest, m_i, log_mbh, z) -> np.ndarray:
    """SF_inf in magnitudes (MacLeod et al. 2010 eq. 7); arguments broadcast."""
    return _macleod(SF_COEFFS, lambda_rest, m_i, log_mbh, z)


def damping_time_days(lambda_rest, m_i, log_mbh, z) -> np.ndarray:
    """Rest-frame damping timescale tau in days (MacLeod et al. 2010 eq. 7)."""
    return _macleod(TAU_COEFFS, lambda_rest, m_i, log_mbh, z)


def ou_at_times(rng, times_years: np.ndarray, tau_years: np.ndarray) -> np.ndarray:
    """A unit-variance Ornstein-Uhlenbeck process per row, at that row's times.

    Args:
        times_years: [n, k] observation times of each object (any order).
        tau_years: [n] observed-frame damping times.
    Returns:
        [n, k] values of the process at those times (stationary: N(0, 1) marginally).
    """
    n, k = times_years.shape
    order = np.argsort(times_years, axis=1)
    t = np.take_along_axis(times_years, order, axis=1)
    x = np.empty((n, k))
    x[:, 0] = rng.normal(0.0, 1.0, n)
    for j in range(1, k):
        rho = np.exp(-(t[:, j] - t[:, j - 1]) / tau_years)
        x[:, j] = rho * x[:, j - 1] + np.sqrt(1.0 - rho ** 2) * rng.normal(0.0, 1.0, n)
    out = np.empty_like(x)
    np.put_along_axis(out, order, x, axis=1)
    return out


def epoch_flux_factors(rng, z, m_i, log_mbh, band_lambda: np.ndarray, band_survey: list[str],
                       surveys: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each band's flux at its survey's epoch(s) over the mean-magnitude flux.

    Args:
        z, m_i, log_mbh: [n] redshift, absolute i magnitude, log10 black-hole mass.
        band_lambda: [b] effective wavelengths (Angstrom, observed frame).
        band_survey: [b] survey of each band (a key of ``surveys``).
        surveys: survey -> {years: [start, end], epochs: k averaged (a stack), per_band: bool
            (each band observed at its own epochs, else all the survey's bands together)}.
    Returns:
        (factors [n, b], SF_inf at rest 4000 A [n], observed-frame tau in days [n]).
    """
    z = np.asarray(z, float)
    n = len(z)
    tau_obs_years = damping_time_days(4000.0, m_i, log_mbh, z) * (1.0 + z) / DAYS_PER_YEAR
    groups: dict[tuple, list[int]] = {}
    for j, survey in enumerate(band_survey):
        key = (survey, j) if surveys[survey].get("per_band", False) else (survey, -1)
        groups.setdefault(key, []).append(j)
    times, slices = [], {}
    for key in groups:
        spec = surveys[key[0]]
        start, end = spec["years"]
        k = int(spec.get("epochs", 1))
        slices[key] = slice(sum(t.shape[1] for t in times), sum(t.shape[1] for t in times) + k)
        times.append(rng.uniform(start, end, (n, k)))
    latent = ou_at_times(rng, np.concatenate(times, axis=1), tau_obs_years) if times else np.zeros((n, 0))
    factors = np.ones((n, len(band_lambda)))
    for key, bands in groups.items():
        x = latent[:, slices[key]]                                   # [n, epochs]
        for j in bands:
            sigma = structure_function_inf(band_lambda[j] / (1.0 + z), m_i, log_mbh, z) / np.sqrt(2.0)
            factors[:, j] = np.mean(10.0 ** (-0.4 * sigma[:, None] * x), axis=1)  # a stack averages flux
    return factors, structure_function_inf(4000.0, m_i, log_mbh, z), tau_obs_years * DAYS_PER_YEAR
