"""Band photometry of every spectral component, precomputed once on a redshift grid.

Integrating spectra through filters is the slow part of a simulation, and it only depends
on a handful of continuous parameters. So the driver integrates each component once on a
grid (redshift x continuum tilt x reddening x IGM-opacity scale for the quasar), and each
object's fluxes are then a multilinear interpolation in that grid plus a linear mix of the
components -- microseconds per object (see ``bench/simulate.py``).

Band fluxes are AB flux densities <f_nu> = int f_lambda R lambda dlambda / int R c/lambda dlambda,
in arbitrary units shared by all components (objects are normalised to a drawn magnitude).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import speclite.filters

from photoz_spark.bands import Registry
from photoz_spark.sim import igm, sed

TILTS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])          # delta alpha_nu
EBVS = np.array([0.0, 0.05, 0.1, 0.2, 0.35, 0.5])       # E(B-V), SMC law
IGM_SCALES = np.array([0.4, 0.7, 1.0, 1.4, 2.0])         # multiplies the mean IGM tau
LLS_X = np.linspace(0.0, 1.0, 41)                       # LLS cut in units of the rest Lyman limit
TEMPERATURES = np.exp(np.linspace(np.log(2300.0), np.log(15000.0), 60))
TINY = 1e-30
NORTH = "@north"                                          # suffix of a band's DESI-North column

# Emission-line groups whose strengths scatter independently (rest Angstrom); "rest" takes the
# Fe II blends and everything else. EW scatter of single lines is ~0.2-0.3 dex at fixed
# luminosity (Shen et al. 2011, ApJS 194, 45, Sect. 4), more than one shared scale gives.
LINE_GROUPS = {"lya_nv": (1150.0, 1290.0), "siiv": (1360.0, 1440.0), "civ": (1480.0, 1600.0),
               "ciii": (1850.0, 1960.0), "mgii": (2700.0, 2900.0), "hbeta_oiii": (4780.0, 5050.0),
               "halpha": (6400.0, 6700.0)}
# Broad absorption troughs, outflow velocities 2,000-20,000 km/s blueward of each line
# (BI integrates from 3,000 to 25,000 km/s: Weymann et al. 1991; most troughs lie inside this
# range, Gibson et al. 2009). Relative depths: C IV 1, Si IV and N V half of it.
BAL_VELOCITY_KMS = (2000.0, 20000.0)
HIBAL_LINES = ((1549.06, 1.0), (1396.76, 0.5), (1240.14, 0.5))
LOBAL_LINES = ((2798.75, 1.0), (1857.40, 0.6))  # Mg II and Al III (LoBALs add these)
LYA = 1215.67
DLA_REF_EW = 10.0        # Angstrom, absorber frame: the grid's unit damped-Lyman-alpha trough


def filter_weights(filters: list, z: float) -> np.ndarray:
    """Matrix W (bands x REST_GRID) with band flux = W @ rest-frame f_lambda at redshift z."""
    lam_obs = sed.REST_GRID * (1.0 + z)
    rows = []
    for f in filters:
        wave = f.wavelength
        resp = np.interp(lam_obs, wave, f.response, left=0.0, right=0.0)
        norm = np.trapezoid(f.response / wave, wave)
        # observed f_lambda = L(lam_rest)/(1+z); d lam_obs = (1+z) lam_rest dlnlam
        rows.append(resp * lam_obs * sed.REST_GRID * sed.DLNLAM / (1.0 + z) / norm)
    return np.array(rows)


@dataclass
class PhotometryGrid:
    """Precomputed band fluxes; arrays are indexed [z, (tilt, ebv, igm,) band]."""

    band_names: list[str]
    z: np.ndarray
    log_continuum: np.ndarray   # [z, tilt, ebv, igm, band] log of (continuum) band flux
    line_ratio: np.ndarray      # [z, tilt, ebv, igm, band] lines / continuum
    below_lyman: np.ndarray     # [z, band] fraction of the quasar's band flux from rest < 912 A
    lls_blocked: np.ndarray     # [z, x, band] fraction of that part from rest < 912 x A
    hot_dust: np.ndarray        # [z, band]
    warm_dust: np.ndarray       # [z, band]
    galaxies: dict              # kind -> [z, band], mean IGM applied
    stars: np.ndarray           # [temperature, band] black bodies at z = 0
    line_share: np.ndarray      # [z, group, band] share of the lines' band flux from each LINE_GROUPS + rest
    hibal: np.ndarray           # [z, band] share of the band flux inside unit-depth HiBAL troughs
    lobal: np.ndarray           # [z, band] the same for the LoBAL-only troughs (Mg II, Al III)
    dla: np.ndarray             # [z, x, band] share absorbed by a DLA_REF_EW trough at LYA x (rest)
    n_bands: int = 0            # the registry's bands come first; then their '@north' variants

    def band_index(self, name: str) -> int:
        return self.band_names.index(name)

    @property
    def registry_bands(self) -> list[str]:
        """The bands of conf/bands.yaml (without the photometric-system variants)."""
        return self.band_names[:self.n_bands]


def _variant_spectra(base: np.ndarray, transmission_by_scale: np.ndarray) -> np.ndarray:
    """base (REST) -> [tilt, ebv, igm, REST] with each multiplicative effect applied."""
    tilt = sed.tilt(TILTS[:, None])                                  # f_nu ~ nu^(alpha + d)
    redden = 10.0 ** (-0.4 * EBVS[:, None] * sed.smc_extinction()[None, :])
    return (base[None, None, None, :] * tilt[:, None, None, :] * redden[None, :, None, :]
            * transmission_by_scale[None, None, :, :])


def build_grid(registry: Registry, z_max: float = 6.0, dz: float = 0.01) -> PhotometryGrid:
    """Integrate every component through every band of ``registry`` on a redshift grid.

    Args:
        registry: the bands (conf/bands.yaml); all of them are integrated.
        z_max: largest redshift of the grid.
        dz: grid step (lines move through filters smoothly at 0.01).
    Returns:
        A PhotometryGrid.
    """
    bands = list(registry.bands.values())
    north = registry.north_filters
    names = [b.name for b in bands] + [name + NORTH for name in north]
    filters = [speclite.filters.load_filter(b.filter) for b in bands] + \
        [speclite.filters.load_filter(f) for f in north.values()]
    zs = np.round(np.arange(0.0, z_max + dz / 2, dz), 6)
    parts = sed.quasar_components()
    galaxy_kinds = ("E", "Sbc", "Im")
    galaxy_seds = np.array([sed.galaxy(k) for k in galaxy_kinds])
    below = sed.REST_GRID < sed.LYMAN_LIMIT
    cut_masks = np.array([sed.REST_GRID < sed.LYMAN_LIMIT * x for x in LLS_X])

    nb = len(filters)
    shape = (len(zs), len(TILTS), len(EBVS), len(IGM_SCALES), nb)
    log_cont, ratio = np.empty(shape), np.empty(shape)
    below_frac = np.empty((len(zs), nb))
    blocked = np.empty((len(zs), len(LLS_X), nb))
    hot, warm = np.empty((len(zs), nb)), np.empty((len(zs), nb))
    gal = np.empty((len(galaxy_kinds), len(zs), nb))
    group_masks = _line_group_masks()
    share = np.empty((len(zs), len(group_masks), nb))
    hibal, lobal = np.empty((len(zs), nb)), np.empty((len(zs), nb))
    trough_hi, trough_lo = _trough(HIBAL_LINES), _trough(LOBAL_LINES)
    dla_masks = _dla_troughs()
    dla = np.empty((len(zs), len(LLS_X), nb))
    for i, z in enumerate(zs):
        w = filter_weights(filters, z)
        tau = igm.tau_igm(z, sed.REST_GRID * (1.0 + z))
        trans = np.exp(-IGM_SCALES[:, None] * tau[None, :])
        cont = _variant_spectra(parts["continuum"], trans) @ w.T
        lines = _variant_spectra(parts["lines"], trans) @ w.T
        log_cont[i] = np.log(np.maximum(cont, TINY))
        ratio[i] = lines / np.maximum(cont, TINY)
        nominal = (parts["continuum"] + parts["lines"]) * trans[2]
        total = w @ nominal
        lyc = w @ (nominal * below)
        below_frac[i] = lyc / np.maximum(total, TINY)
        blocked[i] = (w @ (nominal[None, :] * cut_masks).T).T / np.maximum(lyc, TINY)
        hot[i], warm[i] = w @ parts["hot_dust"], w @ parts["warm_dust"]
        gal[:, i] = (galaxy_seds * trans[2]) @ w.T
        lines_nominal = w @ (parts["lines"] * trans[2])
        group = (w @ (parts["lines"] * trans[2] * group_masks).T).T
        usable = np.abs(lines_nominal) > 1e-9 * np.maximum(total, TINY)
        share[i] = np.where(usable, group / np.where(usable, lines_nominal, 1.0), 0.0)
        share[i, -1] = np.where(usable, share[i, -1], 1.0)  # no lines in the band: all "rest"
        hibal[i] = (w @ (nominal * trough_hi)) / np.maximum(total, TINY)
        lobal[i] = (w @ (nominal * trough_lo)) / np.maximum(total, TINY)
        dla[i] = (w @ (nominal[None, :] * dla_masks).T).T / np.maximum(total, TINY)
    w0 = filter_weights(filters, 0.0)
    stars = np.array([w0 @ sed.blackbody(t) for t in TEMPERATURES])
    return PhotometryGrid(
        band_names=names, z=zs, log_continuum=log_cont, line_ratio=ratio,
        below_lyman=below_frac, lls_blocked=np.clip(blocked, 0.0, 1.0), hot_dust=hot, warm_dust=warm,
        galaxies=dict(zip(galaxy_kinds, gal)), stars=stars, line_share=share,
        hibal=np.clip(hibal, 0.0, 1.0), lobal=np.clip(lobal, 0.0, 1.0), dla=np.clip(dla, 0.0, 1.0),
        n_bands=len(bands),
    )


def _line_group_masks() -> np.ndarray:
    """[group, REST] 0/1 masks of LINE_GROUPS, then the rest (so the masks sum to 1)."""
    masks = [((sed.REST_GRID >= lo) & (sed.REST_GRID < hi)).astype(float) for lo, hi in LINE_GROUPS.values()]
    return np.array(masks + [1.0 - np.sum(masks, axis=0)])


def _trough(lines) -> np.ndarray:
    """Depth profile (0..1 per unit trough depth) of broad absorption blueward of ``lines``."""
    c_kms = 299792.458
    depth = np.zeros_like(sed.REST_GRID)
    for centre, relative in lines:
        lo, hi = centre * (1 - BAL_VELOCITY_KMS[1] / c_kms), centre * (1 - BAL_VELOCITY_KMS[0] / c_kms)
        depth = np.maximum(depth, relative * ((sed.REST_GRID >= lo) & (sed.REST_GRID <= hi)))
    return depth


def _dla_troughs() -> np.ndarray:
    """[x, REST] a black trough of absorber-frame width DLA_REF_EW at rest LYA x (quasar frame)."""
    half = 0.5 * DLA_REF_EW * LLS_X[:, None]
    centre = LYA * LLS_X[:, None]
    return ((sed.REST_GRID[None, :] >= centre - half) & (sed.REST_GRID[None, :] <= centre + half)).astype(float)


def _axis_position(nodes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and fractional distance for linear interpolation (clipped to the grid)."""
    values = np.clip(values, nodes[0], nodes[-1])
    idx = np.clip(np.searchsorted(nodes, values, side="right") - 1, 0, len(nodes) - 2)
    frac = (values - nodes[idx]) / (nodes[idx + 1] - nodes[idx])
    return idx, frac


def interpolate(table: np.ndarray, axes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Multilinear interpolation of ``table`` over its leading axes, one query per object.

    Args:
        table: array whose leading len(axes) axes are the interpolation axes.
        axes: for each leading axis, (grid nodes, per-object query values).
    Returns:
        Array [n_objects, *table.shape[len(axes):]].
    """
    positions = [_axis_position(nodes, values) for nodes, values in axes]
    n = len(positions[0][0])
    out = np.zeros((n,) + table.shape[len(axes):])
    for corner in range(2 ** len(axes)):
        index, weight = [], np.ones(n)
        for k, (idx, frac) in enumerate(positions):
            upper = (corner >> k) & 1
            index.append(idx + upper)
            weight = weight * (frac if upper else 1.0 - frac)
        out += weight.reshape((n,) + (1,) * (out.ndim - 1)) * table[tuple(index)]
    return out


def quasar_fluxes(grid: PhotometryGrid, z, tilt, ebv, igm_scale, line_scale, hot_scale, warm_scale,
                  lls_x, group_scales=None, hibal_depth=None, lobal_depth=None, dla_x=None,
                  dla_ew=None) -> np.ndarray:
    """Band fluxes [n, band] of quasars (arbitrary units) from their physical parameters.

    Args:
        z, tilt, ebv, igm_scale: redshift, delta alpha_nu, SMC E(B-V), IGM tau scale.
        line_scale: emission-line strength relative to the composite (Baldwin effect + scatter).
        hot_scale, warm_scale: dust emission relative to the mean SED.
        lls_x: rest-frame cut of the nearest Lyman-limit system in units of 912 A (0 = none).
        group_scales: [n, len(LINE_GROUPS) + 1] extra strength of each line group (None: 1).
        hibal_depth, lobal_depth: depth of the HiBAL / LoBAL troughs (0 = none; None: none).
        dla_x: rest position of a damped Lyman-alpha trough in units of 1215.67 A (0 = none).
        dla_ew: its absorber-frame equivalent width (Angstrom).
    """
    axes = [(grid.z, z), (TILTS, tilt), (EBVS, ebv), (IGM_SCALES, igm_scale)]
    cont = np.exp(interpolate(grid.log_continuum, axes))
    lines = cont * interpolate(grid.line_ratio, axes)
    zaxis = [(grid.z, z)]
    if group_scales is not None:
        share = interpolate(grid.line_share, zaxis)              # [n, group, band]
        lines *= np.einsum("ngb,ng->nb", share, group_scales)
    agn = cont + line_scale[:, None] * lines
    blocked = interpolate(grid.lls_blocked, zaxis + [(LLS_X, lls_x)]) * (lls_x > 0)[:, None]
    agn *= 1.0 - interpolate(grid.below_lyman, zaxis) * blocked
    if hibal_depth is not None:
        agn *= 1.0 - hibal_depth[:, None] * interpolate(grid.hibal, zaxis)
    if lobal_depth is not None:
        agn *= 1.0 - lobal_depth[:, None] * interpolate(grid.lobal, zaxis)
    if dla_x is not None:
        absorbed = interpolate(grid.dla, zaxis + [(LLS_X, dla_x)]) * (dla_ew / DLA_REF_EW)[:, None]
        agn *= 1.0 - np.clip(absorbed * (dla_x > 0)[:, None], 0.0, 0.95)
    dust = hot_scale[:, None] * interpolate(grid.hot_dust, zaxis) \
        + warm_scale[:, None] * interpolate(grid.warm_dust, zaxis)
    return np.maximum(agn, 0.0) + dust


def galaxy_fluxes(grid: PhotometryGrid, kind: str, z) -> np.ndarray:
    """Band fluxes [n, band] of a galaxy template at redshifts z (arbitrary units)."""
    return interpolate(grid.galaxies[kind], [(grid.z, z)])


def star_fluxes(grid: PhotometryGrid, temperature) -> np.ndarray:
    """Band fluxes [n, band] of black-body stars (arbitrary units)."""
    return np.exp(interpolate(np.log(np.maximum(grid.stars, TINY)), [(TEMPERATURES, temperature)]))


def _grid_key(registry_file: Path) -> str:
    """Changes whenever the bands, the simulator's physics code or its data files change."""
    digest = hashlib.sha1(Path(registry_file).read_bytes())
    for module in (sed, igm, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    for data in sorted(sed.DATA_DIR.iterdir()):
        digest.update(f"{data.name}:{data.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def load_or_build_grid(registry: Registry, registry_file: Path, cache_dir: Path | None) -> PhotometryGrid:
    """``build_grid``, cached as ``<cache_dir>/photometry-grid-<key>.pkl`` (a few seconds saved per run)."""
    if cache_dir is None:
        return build_grid(registry)
    path = Path(cache_dir) / f"photometry-grid-{_grid_key(registry_file)}.pkl"
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError):
            pass  # unreadable or from another layout: rebuild it below
    grid = build_grid(registry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump(grid, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)  # atomic: a concurrent run reads a whole file or none
    return grid
