"""Rest-frame spectral components of the simulated sources, on one log-wavelength grid.

The quasar is split into parts that vary independently from object to object:

- ``continuum``: accretion-disc power laws. f_nu ~ nu^-1.76 below 1200 A (Telfer et al. 2002),
  nu^-0.44 from 1200 A to the composite's break at 5000 A (Vanden Berk et al. 2001), and the
  disc's falling red side nu^+0.593 beyond it (Temple, Hewett & Banerji 2021), continuous at
  the joins and 1 at 2500 A in f_lambda.
- ``lines``: the emission lines and Fe II blends, i.e. the composite (Telfer below 1300 A,
  Vanden Berk above) minus the continuum, with the host-galaxy light that Vanden Berk's
  composite carries above ~4500 A removed by a running lower envelope.
- ``hot_dust`` and ``warm_dust``: 1250 K and 450 K black bodies (torus inner rim and warm
  dust); the hot one normalised to the disc at 5500 A as Temple et al. (2021) do, so that the
  near-IR bump has the strength of type-1 quasar mean SEDs.
- galaxy templates (Assef et al. 2010) for the host and for field galaxies.

All spectra are f_lambda in arbitrary but shared units on ``REST_GRID`` (Angstrom).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits

DATA_DIR = Path(__file__).resolve().parent / "data"

# 80 A .. 40 um, 0.2 % steps: FUV at z = 5.5 reaches 200 A rest, W4 at z = 0 reaches 28 um.
DLNLAM = 0.002
REST_GRID = np.exp(np.arange(np.log(80.0), np.log(4.0e5), DLNLAM))

LYMAN_LIMIT = 911.8      # Angstrom
PIVOT = 2500.0           # Angstrom, where the continuum slope pivots
# The disc's red side (issue #20). Vanden Berk et al. (2001, AJ 122, 549) fit their composite with
# alpha_nu = -0.44 up to a break near 5000 A; redward of it the composite is host starlight (and hot
# dust), which the sim adds separately, so it says nothing of the disc there. Redward we take Temple,
# Hewett & Banerji (2021, MNRAS 508, 737)'s slope, fit to DR16Q x UKIDSS x unWISE colours: f_nu ~
# nu^+0.593 (their qsogen plslp2). Their break is at 3880 A; with the Vanden Berk lines (Fe II and
# Balmer continuum, +36 % over this continuum at 2500-3000 A) a break there makes i - z at z = 0.8-1.1
# 0.18 mag bluer than Richards et al. (2001) and i - W1 0.25-0.45 bluer than Assef et al. (2010)'s AGN
# template at z = 1-2, so the break stays at Vanden Berk's 5000 A. The mean nucleus then has
# nu L_nu(1 um) / nu L_nu(2500 A) = 0.16 (tilt_mean = 0.14; Assef's template 0.20, Temple's continuum +
# dust 0.19) instead of 0.30, and i - W1 agrees with the template within 0.07 at z = 0.5-2
# (tests/test_sim_realism.py::test_near_infrared_against_assef_2010_agn_template).
DISC_BREAK = 5000.0      # Angstrom
DISC_RED_ALPHA = 0.593   # f_nu ~ nu^DISC_RED_ALPHA redward of DISC_BREAK
HOT_DUST_K = 1250.0
WARM_DUST_K = 450.0
# Hot dust as Temple et al. (2021) normalise theirs (qsogen bbnorm): f_nu(2 um) of the black body =
# 3.961 x the disc's f_nu(5500 A). nu L_nu at 2, 2.5, 3 um over 5100 A is then -0 %, +2 %, -0 % off
# Assef et al. (2010)'s AGN template at tilt_mean = 0.14. W1 - W2 (Vega), population medians: 1.05,
# 1.34, 1.59, 1.54, 0.95 at z = 0.35, 1, 1.5, 2, 2.9 (the template: 1.15, 1.41, 1.47, 1.33, 0.99 at
# z = 0.3, 1, 1.5, 2, 3; above the Stern et al. 2012 AGN cut of 0.8 for 99 % at z < 3).
HOT_FNU_2UM_OVER_DISC_5500 = 3.961
WARM_TO_HOT = 1.0        # peak nu f_nu of warm dust over that of hot dust
HC_OVER_K = 1.4388e8     # h c / k in Angstrom K


def _read_fits_spectrum(name: str) -> tuple[np.ndarray, np.ndarray]:
    with fits.open(DATA_DIR / name) as hdul:
        data = hdul[1].data
        return np.asarray(data["wa"], float), np.asarray(data["fl"], float)


def _interp(wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Resample onto REST_GRID, zero outside the input range."""
    return np.interp(REST_GRID, wave, flux, left=0.0, right=0.0)


def continuum(grid: np.ndarray = REST_GRID, red_side: bool = True) -> np.ndarray:
    """Broken power-law disc continuum, f_lambda, equal to 1 at 2500 A.

    Args:
        grid: rest wavelengths (Angstrom).
        red_side: False gives Vanden Berk's alpha_nu = -0.44 on past DISC_BREAK: the continuum the
            composite's emission lines are measured against (so they keep their fluxes).
    Returns:
        f_lambda on ``grid``.
    """
    # f_lambda = lambda^-(2 + alpha_nu)
    def power(lam, alpha_nu, ref):
        return (lam / ref) ** (-(2.0 + alpha_nu))

    mid = power(grid, -0.44, PIVOT)
    at_1200 = power(1200.0, -0.44, PIVOT)
    euv = at_1200 * power(grid, -1.76, 1200.0)
    out = np.where(grid < 1200.0, euv, mid)
    if red_side:
        red = power(DISC_BREAK, -0.44, PIVOT) * power(grid, DISC_RED_ALPHA, DISC_BREAK)
        out = np.where(grid > DISC_BREAK, red, out)
    return out


def tilt(delta_alpha, grid: np.ndarray = REST_GRID) -> np.ndarray:
    """Factor that changes f_nu ~ nu^alpha into nu^(alpha + delta_alpha), 1 at PIVOT.

    Args:
        delta_alpha: the slope change (a scalar, or an array [k, 1] for k slopes at once).
        grid: rest wavelengths (Angstrom).
    Returns:
        The factor on ``grid`` (f_lambda and f_nu alike).
    """
    return (grid / PIVOT) ** (-np.asarray(delta_alpha, float))


def _running_quantile(values: np.ndarray, half_width: int, q: float) -> np.ndarray:
    padded = np.pad(values, half_width, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half_width + 1)
    return np.quantile(windows, q, axis=1)


@lru_cache(maxsize=1)
def composite() -> np.ndarray:
    """The observed-light quasar composite (lines + continuum) on REST_GRID, 306-8400 A."""
    vdb_wave, vdb_flux = _read_fits_spectrum("vandenberk2001_composite.fits")
    tel = np.loadtxt(DATA_DIR / "telfer2002_composite.txt", comments="#", skiprows=5)
    vdb = _interp(vdb_wave, vdb_flux)
    telfer = _interp(tel[:, 0], tel[:, 1])
    # Scale Telfer to Vanden Berk on the line-free 1280-1320 A window, join at 1300 A.
    window = (REST_GRID > 1280) & (REST_GRID < 1320)
    telfer *= np.median(vdb[window]) / np.median(telfer[window])
    joined = np.where(REST_GRID < 1300.0, telfer, vdb)
    # Normalise so the composite's continuum (1350-1365 A window) matches continuum().
    cont = continuum()
    norm = (REST_GRID > 1350) & (REST_GRID < 1365)
    joined *= np.median(cont[norm]) / np.median(joined[norm])
    joined[(REST_GRID < 306.0) | (REST_GRID > 8400.0)] = 0.0
    return joined


@lru_cache(maxsize=1)
def emission_lines() -> np.ndarray:
    """Emission lines and Fe II blends: composite minus its own continuum (and minus host light redward)."""
    comp = composite()
    cont = continuum(red_side=False)
    inside = (REST_GRID >= 306.0) & (REST_GRID <= 8400.0)
    excess = np.where(inside, comp - cont, 0.0)
    # Above ~4500 A the composite holds host-galaxy starlight: remove a smooth lower envelope
    # (20th percentile over +-8 %) so only Hbeta, [O III], Halpha and Fe II remain.
    envelope = _running_quantile(excess, half_width=40, q=0.2)
    red = REST_GRID > 4500.0
    excess[red] -= np.clip(envelope[red], 0.0, None)
    # Lines never cancel more than 30 % of the continuum (absorption troughs of the composite).
    excess = np.maximum(excess, -0.3 * cont)
    taper = np.clip((8400.0 - REST_GRID) / 400.0, 0.0, 1.0)  # fade out over 8000-8400 A
    return np.where(inside, excess * taper, 0.0)


def blackbody(temperature: float, grid: np.ndarray = REST_GRID) -> np.ndarray:
    """Planck f_lambda (arbitrary units) at ``temperature`` kelvin."""
    x = np.clip(HC_OVER_K / (grid * temperature), None, 700.0)
    return grid ** -5.0 / np.expm1(x)


def _peak_nu_fnu(f_lambda: np.ndarray) -> float:
    return float(np.max(f_lambda * REST_GRID))


def _f_nu(f_lambda: np.ndarray, wavelength: float) -> float:
    """f_nu (arbitrary units, shared) of an f_lambda spectrum on REST_GRID at ``wavelength``."""
    return float(np.interp(wavelength, REST_GRID, f_lambda * REST_GRID ** 2))


def hot_dust() -> np.ndarray:
    """The hot-dust black body, f_lambda, with f_nu(2 um) = HOT_FNU_2UM_OVER_DISC_5500 x the disc's f_nu(5500 A)."""
    bb = blackbody(HOT_DUST_K)
    return bb * HOT_FNU_2UM_OVER_DISC_5500 * _f_nu(continuum(), 5500.0) / _f_nu(bb, 2.0e4)


def warm_dust() -> np.ndarray:
    """The warm-dust black body, f_lambda, whose nu f_nu peak is WARM_TO_HOT times the hot dust's."""
    bb = blackbody(WARM_DUST_K)
    return bb * WARM_TO_HOT * _peak_nu_fnu(hot_dust()) / _peak_nu_fnu(bb)


@lru_cache(maxsize=4)
def galaxy(kind: str) -> np.ndarray:
    """Assef et al. (2010) galaxy template ``E``, ``Sbc`` or ``Im``, 1 at 5500 A in f_lambda."""
    if kind not in ("E", "Sbc", "Im"):
        raise ValueError(f"unknown galaxy template {kind!r}; choose E, Sbc or Im")
    wave, flux = _read_fits_spectrum(f"assef2010_{kind}.fits")
    # Below the template's 303 A edge, starlight is negligible: extend with zero.
    spec = np.interp(REST_GRID, wave, flux, left=0.0, right=flux[-1] * (wave[-1] / REST_GRID[-1]) ** 4)
    return spec / np.interp(5500.0, REST_GRID, spec)


def smc_extinction(grid: np.ndarray = REST_GRID) -> np.ndarray:
    """A_lambda / E(B-V) of the SMC law (Pei 1992 fit, R_V = 2.93)."""
    lam_um = grid / 1.0e4
    terms = ((185.0, 0.042, 90.0, 2.0), (27.0, 0.08, 5.5, 4.0), (0.005, 0.22, -1.95, 2.0),
             (0.010, 9.7, -1.95, 2.0), (0.012, 18.0, -1.80, 2.0), (0.030, 25.0, 0.0, 2.0))
    xi = sum(a / ((lam_um / lam) ** n + (lam / lam_um) ** n + b) for a, lam, b, n in terms)
    return xi * (1.0 + 2.93)  # A_lambda/A_B * A_B/E(B-V)


def quasar_components() -> dict[str, np.ndarray]:
    """The quasar's independent rest-frame parts, f_lambda on REST_GRID."""
    return {
        "continuum": continuum(),
        "lines": emission_lines(),
        "hot_dust": hot_dust(),
        "warm_dust": warm_dust(),
    }
