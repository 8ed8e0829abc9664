"""Simulate one HEALPix pixel of the multi-survey quasar sky.

``simulate_pixel`` is a pure function of (configuration, seed, pixel): a pixel simulated on
any worker, in any run, gives the same rows, so a sky of any size scales out one pixel per
task. It returns Arrow tables in the native schemas of the surveys (column names and units
from ``conf/bands.yaml``) plus a truth table for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import healpy as hp
import numpy as np
import pyarrow as pa

from photoz_spark.bands import Registry
from photoz_spark.hats import healpix29
from photoz_spark.sim import igm, milkyway, photometry, variability
from photoz_spark.sim.photometry import PhotometryGrid

NANOMAGGY_JY = 3.631e-6
LS_RELEASE, LS_RELEASE_NORTH = 9010, 9011   # DESI Legacy Surveys DR9 south / north release codes
GALAXY_KINDS = ("E", "Sbc", "Im")
GALAXY_MIX = (0.3, 0.45, 0.25)
DESI_GALAXY_TYPE = {"E": "DEV", "Sbc": "EXP", "Im": "REX"}
SIMULATED_CATALOGS = ("dr16q", "sdss", "desi_ls", "lsst")
# Random streams of a pixel beyond the population (0) and the catalogs (1 + catalog index):
# each new effect draws from its own, so switching one off leaves the others' draws unchanged.
STREAM_DIVERSITY, STREAM_VARIABILITY, STREAM_CONDITIONS = 100, 101, 102


@dataclass
class SkyModel:
    """Everything a worker needs to simulate a pixel: settings, bands and the photometry grid."""

    sim: dict
    registry: Registry
    grid: PhotometryGrid


def pixel_rng(seed: int, order: int, pixel: int, stream: int = 0) -> np.random.Generator:
    """An independent, reproducible random stream for one pixel."""
    return np.random.default_rng([int(seed), int(order), int(pixel), int(stream)])


def pixel_area_deg2(order: int) -> float:
    return hp.nside2pixarea(2 ** order, degrees=True)


def random_positions(rng, order: int, pixel: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform on the sphere inside a nested HEALPix pixel (equal-area sub-pixels)."""
    shift = 2 * (29 - order)
    sub = (np.int64(pixel) << shift) + rng.integers(0, 1 << shift, n, dtype=np.int64)
    ra, dec = hp.pix2ang(2 ** 29, sub, nest=True, lonlat=True)
    return np.asarray(ra, float), np.asarray(dec, float)


def scatter_positions(rng, ra, dec, sigma_arcsec) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian astrometric error on the sky, correct at the poles and across RA = 0/360."""
    sigma = np.broadcast_to(np.asarray(sigma_arcsec, float), np.shape(ra)) / 3600.0
    ddec = rng.normal(0.0, 1.0, np.shape(ra)) * sigma
    dra = rng.normal(0.0, 1.0, np.shape(ra)) * sigma / np.maximum(np.cos(np.radians(dec)), 1e-6)
    new_dec = dec + ddec
    over = np.abs(new_dec) > 90.0  # stepped over a pole: reflect and move to the other side
    new_dec = np.where(over, np.sign(new_dec) * 180.0 - new_dec, new_dec)
    new_ra = np.mod(ra + dra + np.where(over, 180.0, 0.0), 360.0)
    return new_ra, new_dec


def sample_piecewise(rng, nodes, weights, n: int) -> np.ndarray:
    """Draws from a piecewise-linear density given at ``nodes``."""
    fine = np.linspace(nodes[0], nodes[-1], 4001)
    pdf = np.interp(fine, nodes, weights)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(fine))])
    return np.interp(rng.random(n) * cdf[-1], cdf, fine)


def sample_counts_mags(rng, lo: float, hi: float, slope: float, n: int) -> np.ndarray:
    """Magnitudes with dN/dm ~ 10^(slope m) between lo and hi."""
    a = np.log(10.0) * slope
    u = rng.random(n)
    return lo + np.log1p(u * np.expm1(a * (hi - lo))) / a


@lru_cache(maxsize=1)
def _distance_modulus_table():
    from astropy.cosmology import Planck18
    z = np.linspace(0.005, 7.0, 1400)
    return z, Planck18.distmod(z).value


def absolute_mag_i(i_mag, z) -> np.ndarray:
    """M_i(z=0) with a power-law (alpha_nu = -0.5) K-correction, as Richards et al. (2006)."""
    zt, dm = _distance_modulus_table()
    return i_mag - np.interp(z, zt, dm) + 1.25 * np.log10(1.0 + z)


def mag_to_nmgy(mag) -> np.ndarray:
    return 10.0 ** (-0.4 * (np.asarray(mag) - 22.5))


def _draw_z_and_mag(rng, n: int, q: dict) -> tuple[np.ndarray, np.ndarray]:
    """Redshifts and i magnitudes, redrawn until M_i is bright enough to be a quasar target."""
    z = np.empty(n)
    i_mag = np.empty(n)
    todo = np.arange(n)
    for _ in range(100):
        if todo.size == 0:
            break
        z[todo] = sample_piecewise(rng, q["z_nodes"], q["z_weights"], todo.size)
        i_mag[todo] = sample_counts_mags(rng, q["i_mag_min"], q["i_mag_max"], q["i_count_slope"], todo.size)
        todo = todo[absolute_mag_i(i_mag[todo], z[todo]) > q["abs_mag_i_faint"]]
    return z, i_mag


def host_fluxes(grid: PhotometryGrid, z, host_ratio, nucleus_i) -> np.ndarray:
    """Band fluxes [n, band] of the host galaxy, K-corrected from its rest-frame i luminosity.

    ``host_ratio`` is host / nucleus in *rest-frame* i (as the absolute magnitudes M_i are).
    Per unit 4 pi D_L^2, a source of rest-frame L_nu is seen at f_nu = (1+z) <L_nu> over
    the blueshifted band, and the grid's band fluxes are that <L_nu> (no (1+z)). The
    nucleus's rest-frame i luminosity follows from its observed i with the alpha_nu = -0.5
    power law of ``absolute_mag_i``: L_i = f_i,obs (1+z)^-0.5. So the host, host_ratio L_i
    in rest-frame i, is seen at host_ratio f_i,obs (1+z)^+0.5 template_b(z) / template_i(0).

    Args:
        grid: the photometry grid.
        z: redshifts.
        host_ratio: host / nucleus luminosity ratio in rest-frame i (within the PSF).
        nucleus_i: the nucleus's observed i flux (any linear unit; the output has the same).
    Returns:
        Array [n, band].
    """
    i_band = grid.band_index("sdss_i")
    host = photometry.galaxy_fluxes(grid, "Sbc", z)
    host_rest_i = photometry.galaxy_fluxes(grid, "Sbc", np.zeros(1))[0, i_band]
    scale = host_ratio * nucleus_i * np.sqrt(1.0 + np.asarray(z)) / host_rest_i
    return scale[:, None] * host


def draw_quasars(rng, n: int, q: dict, grid: PhotometryGrid, xrng=None) -> dict:
    """Physical parameters and noiseless band fluxes (nanomaggies) of n quasars.

    Args:
        rng: the pixel's population stream.
        n: number of quasars.
        q: the ``sim.quasars`` settings.
        grid: the photometry grid (fluxes come out for all its columns, '@north' ones too).
        xrng: stream of the diversity draws (line groups, BALs, DLAs), kept apart so that
            switching them off leaves every other draw as it was (default: ``rng``).
    Returns:
        Per-quasar parameters and ``flux`` [n, grid columns], ``host_flux`` likewise.
    """
    xrng = rng if xrng is None else xrng
    z, i_mag = _draw_z_and_mag(rng, n, q)
    m_i = absolute_mag_i(i_mag, z)
    tilt = np.clip(rng.normal(q["tilt_mean"], q["tilt_sigma"], n), -1.0, 1.0)
    reddened = rng.random(n) < q["reddened_fraction"]
    ebv = np.where(reddened, np.minimum(rng.exponential(q["ebv_mean"], n), 0.5), 0.0)
    igm_scale = np.clip(np.exp(rng.normal(0.0, q["igm_sigma_ln"], n)), 0.4, 2.0)
    lls_z = igm.draw_nearest_lls(z, rng, q["lls_incidence_scale"])
    lls_x = np.where(np.isnan(lls_z), 0.0, (1.0 + np.nan_to_num(lls_z)) / (1.0 + z))
    log_l = -0.4 * (m_i + 26.0)  # log10 L / L(M_i = -26)
    line_scale = np.clip(10.0 ** (q["baldwin_slope"] * log_l + rng.normal(0, q["line_scatter_dex"], n)), 0.2, 5)
    hot = 10.0 ** rng.normal(0.0, q["hot_dust_sigma_dex"], n)
    warm = 10.0 ** rng.normal(0.0, q["warm_dust_sigma_dex"], n)
    extra = _draw_diversity(xrng, z, q)
    flux = photometry.quasar_fluxes(grid, z, tilt, ebv, igm_scale, line_scale, hot, warm, lls_x,
                                    group_scales=extra["group_scales"], hibal_depth=extra["bal_depth"],
                                    lobal_depth=extra["lobal_depth"], dla_x=extra["dla_x"],
                                    dla_ew=extra["dla_ew"])
    i_band = grid.band_index("sdss_i")
    flux *= (mag_to_nmgy(i_mag) / flux[:, i_band])[:, None]
    # Host galaxy: matters for faint (low-luminosity, low-z) quasars only.
    m_host = rng.normal(q["host_abs_mag_i"], q["host_abs_mag_sigma"], n)
    host_ratio = q["host_psf_fraction"] * 10.0 ** (-0.4 * (m_host - m_i))
    host = host_fluxes(grid, z, host_ratio, flux[:, i_band])
    flux += host
    extra.pop("group_scales")
    dla_z = np.where(extra["dla_x"] > 0, extra["dla_x"] * (1.0 + z) - 1.0, np.nan)
    return {"z": z, "i_mag": i_mag, "M_i": m_i, "tilt": tilt, "ebv": ebv, "igm_scale": igm_scale,
            "lls_z": lls_z, "line_scale": line_scale, "hot_dust": hot, "warm_dust": warm,
            "host_ratio_i": host_ratio, "host_flux": host, "flux": flux, "dla_z": dla_z, **extra}


# Damped Lyman-alpha: rest equivalent width on the square-root (damping-wing) part of the curve
# of growth, W = 7.3 A (N_HI / 1e20 cm^-2)^(1/2) (so W >= 10 A at the DLA threshold 2e20).
DLA_EW_AT_1E20 = 7.3
LYB_OVER_LYA = 1025.72 / 1215.67


def _draw_diversity(rng, z: np.ndarray, q: dict) -> dict:
    """Per-line-group strengths, BAL troughs and DLAs (zeros where a switch is off)."""
    n = len(z)
    n_groups = len(photometry.LINE_GROUPS) + 1
    sigma = q.get("line_group_scatter_dex", 0.0)
    groups = 10.0 ** rng.normal(0.0, sigma, (n, n_groups)) if sigma > 0 else None
    bal = rng.random(n) < q.get("bal_fraction", 0.0)
    lo, hi = q.get("bal_depth", [0.2, 0.8])
    bal_depth = np.where(bal, rng.uniform(lo, hi, n), 0.0)
    lobal_depth = np.where(bal & (rng.random(n) < q.get("lobal_share", 0.0)), bal_depth, 0.0)
    dla = rng.random(n) < q.get("dla_fraction", 0.0)
    # In the forest between the quasar's Ly-beta and Ly-alpha, where a DLA is found in spectra.
    dla_x = np.where(dla, rng.uniform(LYB_OVER_LYA, 0.99, n), 0.0)
    n_lo, n_hi = 10.0 ** np.asarray(q.get("dla_log_nhi", [20.3, 21.7]), float)
    nhi = 1.0 / (1.0 / n_lo - rng.random(n) * (1.0 / n_lo - 1.0 / n_hi))   # dN/dN_HI ~ N_HI^-2
    log_nhi = np.where(dla, np.log10(nhi), np.nan)
    dla_ew = np.where(dla, DLA_EW_AT_1E20 * np.sqrt(nhi / 1e20), 0.0)
    return {"group_scales": groups, "bal_depth": bal_depth, "lobal_depth": lobal_depth,
            "dla_x": dla_x, "dla_ew": dla_ew, "dla_log_nhi": log_nhi}


def draw_field(rng, n_star: int, n_gal: int, f: dict, grid: PhotometryGrid) -> dict:
    """Unrelated stars and galaxies: kind, redshift and noiseless band fluxes (nanomaggies)."""
    r_band = grid.band_index("sdss_r")
    r_star = sample_counts_mags(rng, f["bright_limit"], f["mag_limit"], f["star_count_slope"], n_star)
    temp = np.exp(rng.uniform(np.log(2800.0), np.log(9000.0), n_star))
    stars = photometry.star_fluxes(grid, temp)
    stars *= (mag_to_nmgy(r_star) / stars[:, r_band])[:, None]
    r_gal = sample_counts_mags(rng, f["bright_limit"], f["mag_limit"], f["galaxy_count_slope"], n_gal)
    z_med = np.clip(0.1 + 0.08 * (r_gal - 16.0), 0.05, 1.0)
    z_gal = np.clip(z_med * rng.gamma(3.0, 1.0, n_gal) / 2.674, 0.01, 2.0)
    kind = rng.choice(len(GALAXY_KINDS), n_gal, p=GALAXY_MIX)
    gals = np.empty((n_gal, len(grid.band_names)))
    for k, name in enumerate(GALAXY_KINDS):
        sel = kind == k
        gals[sel] = photometry.galaxy_fluxes(grid, name, z_gal[sel])
    gals *= (mag_to_nmgy(r_gal) / gals[:, r_band])[:, None]
    labels = np.array(["star"] * n_star + [GALAXY_KINDS[k] for k in kind], dtype=object)
    return {"kind": labels, "z": np.concatenate([np.zeros(n_star), z_gal]),
                "flux": np.concatenate([stars, gals])}


def observe(rng, flux: np.ndarray, sigma_sky: np.ndarray, calibration: float,
            bad_fraction: float = 0.0, bad_factor: float = 3.0):
    """Noisy fluxes and reported 1-sigma errors: sky noise from the depth plus a calibration floor.

    Faint sources get fluxes <= 0 with finite errors, as forced photometry reports them. A
    share ``bad_fraction`` of measurements scatter by bad_factor x (1 + Pareto(2)) times
    their reported error (blends, artefacts): a heavy tail the error column does not show.
    """
    sigma = np.sqrt(sigma_sky[None, :] ** 2 + (calibration * np.abs(flux)) ** 2)
    scatter = rng.normal(0.0, 1.0, flux.shape)
    if bad_fraction > 0 and flux.size:
        # Which measurements are bad: a binomial count at random places (cheaper than a draw
        # per measurement; a repeated place is simply bad once).
        bad = rng.integers(0, flux.size, rng.binomial(flux.size, bad_fraction))
        scatter.flat[bad] *= bad_factor * (1.0 + rng.pareto(2.0, bad.size))
    return flux + scatter * sigma, sigma


def desi_north(ra, dec, systematics: dict) -> np.ndarray:
    """Whether DESI LS DR9 measured a position with BASS/MzLS (North) rather than DECam (South)."""
    if not systematics.get("desi_north", False):
        return np.zeros(np.shape(ra), bool)
    north_cap = milkyway.galactic_latitude(ra, dec) > 0
    return (np.asarray(dec) >= systematics["desi_north_dec_min"]) & north_cap


def photometric_system(grid: PhotometryGrid, flux: np.ndarray, north: np.ndarray) -> np.ndarray:
    """[n, grid columns] -> [n, registry bands]: North rows take their '@north' columns."""
    out = flux[:, :grid.n_bands].copy()
    for j, name in enumerate(grid.band_names[grid.n_bands:], start=grid.n_bands):
        k = grid.band_index(name.removesuffix(photometry.NORTH))
        out[north, k] = flux[north, j]
    return out


def survey_conditions(sim: dict, registry: Registry, pixel: int) -> tuple[np.ndarray, np.ndarray]:
    """5-sigma depth and zero-point offset (catalog - AB, mag) of every band in one pixel.

    Each survey's depth and zero point wander from pixel to pixel (the same for all its bands),
    by ``sim.systematics.depth_scatter_mag`` and ``zero_point_jitter_mag``; fixed per-band
    offsets come from ``zero_point_mag``. A pure function of (seed, pixel).
    """
    syst = sim.get("systematics", {})
    names = list(registry.bands)
    rng = pixel_rng(sim["seed"], sim["sim_order"], pixel, stream=STREAM_CONDITIONS)
    surveys = sorted({b.survey for b in registry.bands.values()})
    depth_shift = dict(zip(surveys, rng.normal(0.0, 1.0, len(surveys))))
    zp_shift = dict(zip(surveys, rng.normal(0.0, 1.0, len(surveys))))
    depth = np.array([sim["depth_5sigma"][b] + syst.get("depth_scatter_mag", {}).get(registry.band(b).survey, 0.0)
                      * depth_shift[registry.band(b).survey] for b in names])
    zp = np.array([syst.get("zero_point_mag", {}).get(b, 0.0)
                   + syst.get("zero_point_jitter_mag", {}).get(registry.band(b).survey, 0.0)
                   * zp_shift[registry.band(b).survey] for b in names])
    return depth, zp


def extinction_coefficients(sim: dict, registry: Registry, north: np.ndarray, which: str = "r_true") -> np.ndarray:
    """[n, band] A_band / E(B-V): the real sky's (``r_true``, North bands from ``r_north``) or,
    with ``which="r_catalog"``, what each catalog's extinction column is computed with."""
    ext = sim["galactic_extinction"]
    names = list(registry.bands)
    true = np.array([ext["r_true"][b] for b in names])
    north_r = np.array([ext.get("r_north", {}).get(b, ext["r_true"][b]) for b in names])
    r = np.where(north[:, None], north_r[None, :], true[None, :])
    if which == "r_catalog":
        for j, b in enumerate(names):
            if b in ext.get("r_catalog", {}):
                r[:, j] = ext["r_catalog"][b]
    return r


def galactic_ebv(sim: dict, ra, dec) -> np.ndarray:
    """E(B-V) (SFD scale) at positions; zeros when ``sim.galactic_extinction.enabled`` is false."""
    ext = sim.get("galactic_extinction", {})
    if not ext.get("enabled", False):
        return np.zeros(np.shape(ra))
    return milkyway.ebv_sfd(ra, dec, sim["seed"], ext["ebv_pole"], ext["structure_sigma_ln"])


def sdss_names(ra, dec) -> list[str]:
    """IAU-style names as DR16Q's SDSS_NAME: Jhhmmss.ss+ddmmss.s, truncated."""
    names = []
    for r, d in zip(ra, dec):
        h = r / 15.0
        hh, mm = int(h), int((h * 60) % 60)
        ss = (h * 3600) % 60
        sign = "+" if d >= 0 else "-"
        ad = abs(d)
        dd, dm = int(ad), int((ad * 60) % 60)
        ds = (ad * 3600) % 60
        names.append(f"J{hh:02d}{mm:02d}{np.floor(ss * 100) / 100:05.2f}{sign}{dd:02d}{dm:02d}"
                     f"{np.floor(ds * 10) / 10:04.1f}")
    return names


def _band_columns(registry: Registry, catalog: str, obs: np.ndarray, sigma: np.ndarray,
                  band_index: dict) -> dict:
    """Flux and error columns of a catalog, in its native units and error convention."""
    cols = {}
    for band in registry.catalog_bands(catalog):
        to_unit = NANOMAGGY_JY / registry.to_jy(band.unit)
        j = band_index[band.name]
        cols[band.flux] = (obs[:, j] * to_unit).astype(np.float32)
        err = sigma[:, j] * to_unit
        cols[band.err] = (1.0 / err ** 2 if band.err_kind == "ivar" else err).astype(np.float32)
    return cols


def simulate_pixel(model: SkyModel, pixel: int) -> dict[str, pa.Table]:
    """Simulate one sky pixel (HEALPix order ``sim_order``).

    Args:
        model: settings (the ``sim`` section of conf/simulate.yaml), bands and photometry grid.
        pixel: nested pixel index at ``sim_order``.
    Returns:
        {catalog name: table} for each catalog in ``sim.catalogs``, plus ``truth``.
    """
    sim, reg, grid = model.sim, model.registry, model.grid
    order, seed = sim["sim_order"], sim["seed"]
    rng = pixel_rng(seed, order, pixel)
    area = pixel_area_deg2(order)
    q, f = sim["quasars"], sim["field"]
    n_qso = rng.poisson(q["density_deg2"] * area)
    n_star = rng.poisson(f["star_density_deg2"] * area)
    n_gal = rng.poisson(f["galaxy_density_deg2"] * area)

    qso = draw_quasars(rng, n_qso, q, grid, xrng=pixel_rng(seed, order, pixel, stream=STREAM_DIVERSITY))
    qso_ra, qso_dec = random_positions(rng, order, pixel, n_qso)
    field = draw_field(rng, n_star, n_gal, f, grid)
    field_ra, field_dec = random_positions(rng, order, pixel, n_star + n_gal)
    syst = sim.get("systematics", {})

    # What reaches each telescope on average: the DESI photometric system of the position, then
    # Milky Way dust. Then what each survey saw at its own epochs (quasars vary; the field does not).
    qso_north, field_north = desi_north(qso_ra, qso_dec, syst), desi_north(field_ra, field_dec, syst)
    qso["ebv_mw"], field_ebv = galactic_ebv(sim, qso_ra, qso_dec), galactic_ebv(sim, field_ra, field_dec)
    qso["flux"] = photometric_system(grid, qso["flux"], qso_north)
    field["flux"] = photometric_system(grid, field["flux"], field_north)
    if np.any(qso["ebv_mw"] > 0) or np.any(field_ebv > 0):
        qso["flux"] *= milkyway.transmission(qso["ebv_mw"][:, None], extinction_coefficients(sim, reg, qso_north))
        field["flux"] *= milkyway.transmission(field_ebv[:, None], extinction_coefficients(sim, reg, field_north))
    qso["desi_north"] = qso_north
    seen = _variable_fluxes(sim, reg, qso, pixel_rng(seed, order, pixel, stream=STREAM_VARIABILITY))

    band_index = {name: j for j, name in enumerate(grid.registry_bands)}
    depth, zero_point = survey_conditions(sim, reg, pixel)
    sigma_sky = mag_to_nmgy(depth) / 5.0
    to_catalog = 10.0 ** (-0.4 * zero_point)
    bad = (syst.get("bad_error_fraction", 0.0), syst.get("bad_error_factor", 3.0))
    base_id = np.int64(pixel) << 24
    thing_id = base_id + np.arange(n_qso, dtype=np.int64)
    tables, truth_ids = {}, {}
    for catalog in sim["catalogs"]:
        # Independent noise and astrometry per catalog: each survey measured the sky itself.
        crng = pixel_rng(seed, order, pixel, stream=1 + SIMULATED_CATALOGS.index(catalog))
        q_obs, q_sig = observe(crng, seen * to_catalog, sigma_sky, sim["calibration_error"], *bad)
        sigma_pos = sim["astrometry_arcsec"][catalog]
        ra, dec = scatter_positions(crng, qso_ra, qso_dec, sigma_pos)
        if catalog == "dr16q":
            tables[catalog] = _dr16q(crng, qso, q, ra, dec, thing_id, q_obs, q_sig, reg, band_index)
            continue
        f_obs, f_sig = observe(crng, field["flux"] * to_catalog, sigma_sky, sim["calibration_error"], *bad)
        detect = [band_index[b.name] for b in reg.catalog_bands(catalog) if b.survey != "wise"]
        seen_field = np.any(f_obs[:, detect] / f_sig[:, detect] >= sim["detection_snr"], axis=1)
        is_gal = field["kind"][seen_field] != "star"
        f_ra, f_dec = scatter_positions(crng, field_ra[seen_field], field_dec[seen_field],
                                        np.where(is_gal, 2.0 * sigma_pos, sigma_pos))
        table, ids = _photometric(catalog, pixel, np.concatenate([ra, f_ra]), np.concatenate([dec, f_dec]),
                                  np.concatenate([q_obs, f_obs[seen_field]]),
                                  np.concatenate([q_sig, f_sig[seen_field]]),
                                  np.concatenate([np.full(n_qso, "qso", dtype=object), field["kind"][seen_field]]),
                                  reg, band_index,
                                  north=np.concatenate([qso_north, field_north[seen_field]]),
                                  ebv=np.concatenate([qso["ebv_mw"], field_ebv[seen_field]]), sim=sim)
        tables[catalog] = table
        truth_ids[catalog] = ids[:n_qso]
    tables["truth"] = _truth(qso, qso_ra, qso_dec, thing_id, truth_ids, grid, tables.get("dr16q"))
    return tables


def _variable_fluxes(sim: dict, registry: Registry, qso: dict, rng) -> np.ndarray:
    """Quasar fluxes as each band's survey saw them (damped random walk at its epochs)."""
    var = sim.get("variability", {})
    if not var.get("enabled", False):
        return qso["flux"]
    bands = list(registry.bands.values())
    qso["log_mbh"] = variability.draw_log_black_hole_mass(rng, qso["M_i"])
    factors, qso["sf_inf_4000"], qso["tau_obs_days"] = variability.epoch_flux_factors(
        rng, qso["z"], qso["M_i"], qso["log_mbh"], np.array([b.lambda_eff for b in bands]),
        [b.survey for b in bands], var["surveys"])
    return qso["flux"] * factors


# Pairs of lines a spectroscopic pipeline confuses: (1+z_wrong) = (1+z) x rest_true / rest_assumed.
LINE_CONFUSIONS = ((2798.75, 1549.06), (1549.06, 2798.75), (1908.73, 2798.75), (2798.75, 1908.73),
                   (1215.67, 1549.06), (1549.06, 1215.67))


def _wrong_redshifts(rng, z: np.ndarray, q: dict) -> np.ndarray:
    """Line-confusion redshifts for z (a random DR16Q-like z where the confusion falls off 0..z_max)."""
    pair = np.array(LINE_CONFUSIONS)[rng.integers(0, len(LINE_CONFUSIONS), len(z))]
    wrong = (1.0 + z) * pair[:, 0] / pair[:, 1] - 1.0
    fallback = sample_piecewise(rng, q["z_nodes"], q["z_weights"], len(z))
    return np.where((wrong > 0) & (wrong < max(q["z_nodes"])), wrong, fallback)


def _dr16q(rng, qso, q, ra, dec, thing_id, obs, sig, reg, band_index):
    n = len(ra)
    zwarning = np.where(rng.random(n) < q["zwarning_fraction"], 4, 0).astype(np.int32)
    wrong = (zwarning != 0) & (rng.random(n) < 0.5)
    z_spec = qso["z"] + rng.normal(0.0, 0.0005, n) * (1.0 + qso["z"])
    z_spec = np.where(wrong, sample_piecewise(rng, q["z_nodes"], q["z_weights"], n), np.maximum(z_spec, 0.0))
    if q.get("wrong_z_fraction", 0.0) > 0:  # confident (ZWARNING = 0) and wrong, as visual inspection finds
        silent = (zwarning == 0) & (rng.random(n) < q["wrong_z_fraction"])
        z_spec = np.where(silent, _wrong_redshifts(rng, qso["z"], q), z_spec)
    cols = {"SDSS_NAME": sdss_names(ra, dec), "THING_ID": thing_id, "RA": ra, "DEC": dec,
            "Z": z_spec, "ZWARNING": zwarning}
    cols.update(_band_columns(reg, "dr16q", obs, sig, band_index))
    has_galex = rng.random(n) < q["galex_coverage"]
    for band in reg.catalog_bands("dr16q"):  # no GALEX match: DR16Q stores 0 flux and 0 ivar
        cols[band.flux] = np.where(has_galex, cols[band.flux], 0.0).astype(np.float32)
        cols[band.err] = np.where(has_galex, cols[band.err], 0.0).astype(np.float32)
    cols["_healpix_29"] = healpix29(ra, dec)
    return pa.table(cols)


def _extinction_columns(catalog: str, reg: Registry, sim: dict, north, ebv) -> dict:
    """The catalog's Milky Way columns (bands.yaml ``extinction``), computed as the product does."""
    spec = reg.extinction.get(catalog)
    if not spec or not sim.get("galactic_extinction", {}).get("enabled", False):
        return {}
    r = extinction_coefficients(sim, reg, north, which="r_catalog")
    names = list(reg.bands)
    cols = {spec["ebv"]: ebv.astype(np.float32)} if spec.get("ebv") else {}
    for band, column in spec["columns"].items():
        a = r[:, names.index(band)] * ebv
        cols[column] = (milkyway.transmission(ebv, r[:, names.index(band)]) if spec["kind"] == "transmission"
                        else a).astype(np.float32)
    return cols


def _photometric(catalog, pixel, ra, dec, obs, sig, kind, reg, band_index, north, ebv, sim):
    n = len(ra)
    local = np.arange(n, dtype=np.int64)
    is_point = np.isin(kind, ["qso", "star"])
    if catalog == "desi_ls":
        if n >= 1 << 16:
            raise ValueError(f"pixel {pixel} holds {n} DESI sources, more than a brick's 65535 OBJIDs; "
                             "raise sim.sim_order")
        brick = np.full(n, pixel, dtype=np.int32)
        release = np.where(north, LS_RELEASE_NORTH, LS_RELEASE).astype(np.int64)
        ids = (release << 40) | (np.int64(pixel) << 16) | local
        types = np.where(is_point, "PSF", [DESI_GALAXY_TYPE.get(k, "PSF") for k in kind])
        cols = {"RELEASE": release.astype(np.int16), "BRICKID": brick,
                "OBJID": local.astype(np.int32), "LS_ID": ids, "RA": ra, "DEC": dec, "TYPE": types.astype(str)}
    elif catalog == "sdss":
        ids = (np.int64(1) << 59) | (np.int64(pixel) << 24) | local
        cols = {"objID": ids, "ra": ra, "dec": dec, "type": np.where(is_point, 6, 3).astype(np.int16)}
    elif catalog == "lsst":
        ids = (np.int64(pixel) << 24) | local
        cols = {"objectId": ids, "coord_ra": ra, "coord_dec": dec,
                "refExtendedness": np.where(is_point, 0.0, 1.0)}
    else:
        raise ValueError(f"cannot simulate catalog {catalog!r}; simulated catalogs: {SIMULATED_CATALOGS}")
    cols.update(_band_columns(reg, catalog, obs, sig, band_index))
    cols.update(_extinction_columns(catalog, reg, sim, north, ebv))
    cols["_healpix_29"] = healpix29(ra, dec)
    return pa.table(cols), ids


TRUTH_PARAMETERS = ("i_mag", "M_i", "tilt", "ebv", "igm_scale", "lls_z", "line_scale", "hot_dust", "warm_dust",
                    "host_ratio_i", "bal_depth", "lobal_depth", "dla_z", "dla_log_nhi", "ebv_mw", "desi_north",
                    "log_mbh", "sf_inf_4000", "tau_obs_days")


def _truth(qso, ra, dec, thing_id, ids, grid, dr16q) -> pa.Table:
    cols = {"THING_ID": thing_id, "ra_true": ra, "dec_true": dec, "z_true": qso["z"]}
    for catalog, key in (("sdss", "sdss_objID"), ("desi_ls", "LS_ID"), ("lsst", "lsst_objectId")):
        if catalog in ids:
            cols[key] = ids[catalog]
    for name in TRUTH_PARAMETERS:
        if name in qso:  # variability parameters only when it is on
            cols[name] = qso[name]
    if dr16q is not None:
        cols["Z"] = dr16q["Z"].to_numpy()
        cols["ZWARNING"] = dr16q["ZWARNING"].to_numpy()
        cols["has_galex"] = dr16q["FUV_IVAR"].to_numpy() > 0
    for j, band in enumerate(grid.registry_bands):  # mean flux at the telescope: before variability,
        cols[f"true_flux_{band}"] = qso["flux"][:, j].astype(np.float32)  # zero points and noise
    cols["_healpix_29"] = healpix29(ra, dec)
    return pa.table(cols)
