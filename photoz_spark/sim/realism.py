"""Checks that the simulated quasars behave like real ones, and the colour-redshift figure.

The functions take plain arrays (fluxes in any linear unit) so the tests, the job summary
and a notebook all use the same definitions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (blue band, red band, label); WISE colours are converted to Vega as in Stern et al. (2012).
COLOURS = (("sdss_u", "sdss_g", "u-g"), ("sdss_g", "sdss_r", "g-r"), ("sdss_r", "sdss_i", "r-i"),
           ("sdss_i", "sdss_z", "i-z"), ("wise_w1", "wise_w2", "W1-W2 (Vega)"))
STERN_CUT = 0.8  # W1 - W2 (Vega) >= 0.8 selects AGN (Stern et al. 2012)
REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "richards2001_table3.txt"
REFERENCE_COLOURS = ("u-g", "g-r", "r-i", "i-z")
# Richards et al. (2001)'s quasars are SDSS commissioning targets and previously known bright
# quasars (LBQS, ...): compare them with simulated quasars as bright as the SDSS low-redshift
# quasar target limit, i < 19.1 (Richards et al. 2002, AJ 123, 2945).
REFERENCE_I_MAX = 19.1
# Optical to near-IR reference: Assef et al. (2010, ApJ 713, 970)'s type-1 AGN template ("AGN", the
# one they recommend): the mean unreddened nucleus, host light fit separately, 0.03-30 um.
AGN_TEMPLATE_FILE = REFERENCE_FILE.parent / "assef2010_AGN.fits"


def colour(flux_blue, flux_red, vega_offset: float = 0.0) -> np.ndarray:
    """blue - red in magnitudes; NaN where either flux is not positive."""
    blue, red = np.asarray(flux_blue, float), np.asarray(flux_red, float)
    ok = (blue > 0) & (red > 0)
    out = np.full(blue.shape, np.nan)
    out[ok] = -2.5 * np.log10(blue[ok] / red[ok]) + vega_offset
    return out


def wise_vega_offset(registry) -> float:
    """(W1 - W2)_Vega - (W1 - W2)_AB."""
    return registry.band("wise_w2").vega_to_ab - registry.band("wise_w1").vega_to_ab


def binned_median(z, values, edges) -> np.ndarray:
    """Median of ``values`` in each redshift bin (NaN for empty bins), ignoring NaN."""
    idx = np.digitize(z, edges) - 1
    return np.array([np.nanmedian(values[idx == k]) if np.any((idx == k) & np.isfinite(values))
                     else np.nan for k in range(len(edges) - 1)])


def reference_medians() -> dict:
    """Richards et al. (2001) Table 3: median SDSS colours of quasars per redshift bin.

    Returns:
        ``z`` (bin redshifts) and, per colour of REFERENCE_COLOURS, the medians (NaN where the
        bin is empty) and ``N <colour>`` (quasars per bin).
    """
    table = np.loadtxt(REFERENCE_FILE, comments="#")
    out = {"z": table[:, 0]}
    for k, name in enumerate(REFERENCE_COLOURS):
        out[name], out[f"N {name}"] = table[:, 1 + 2 * k], table[:, 2 + 2 * k]
    return out


def catalog_minus_ab(label: str, zero_points: dict | None) -> float:
    """(blue - red) in a survey's catalog system minus the AB colour, from per-band zero points
    (``sim.systematics.zero_point_mag``: catalog mag - AB mag; e.g. SDSS u_AB = u_SDSS - 0.04)."""
    blue, red = next((b, r) for b, r, name in COLOURS if name == label)
    zero_points = zero_points or {}
    return zero_points.get(blue, 0.0) - zero_points.get(red, 0.0)


def reference_offsets(z, colours: dict, z_lo: float, z_hi: float, zero_points: dict | None = None,
                      half_width: float = 0.025) -> dict:
    """Simulated minus Richards et al. (2001) median colour in each of their bins in [z_lo, z_hi].

    Args:
        z: redshifts of the simulated quasars.
        colours: colour name (of REFERENCE_COLOURS) -> per-quasar AB colour (NaN ignored).
        z_lo, z_hi: the bins' redshift range (their tabulated z).
        zero_points: catalog - AB mag per band; R01's magnitudes are SDSS's, so the simulated
            AB colours are put on that system first (None: compare AB with SDSS as is).
        half_width: half the bin width (0.025 up to z = 2.1).
    Returns:
        ``z`` (bins used) and, per colour, the offsets (NaN where either median is missing).
    """
    ref = reference_medians()
    z = np.asarray(z)
    use = (ref["z"] >= z_lo - 1e-9) & (ref["z"] <= z_hi + 1e-9)
    out = {"z": ref["z"][use]}
    for name, values in colours.items():
        values = np.asarray(values, float) + catalog_minus_ab(name, zero_points)
        sim = [np.nanmedian(values[np.abs(z - zc) < half_width]) if np.any(
            (np.abs(z - zc) < half_width) & np.isfinite(values)) else np.nan for zc in out["z"]]
        out[name] = np.array(sim) - ref[name][use]
    return out


def agn_template() -> np.ndarray:
    """Assef et al. (2010)'s AGN template, f_lambda on ``sed.REST_GRID`` (0 outside 303 A - 29.7 um)."""
    from astropy.io import fits

    from photoz_spark.sim import sed

    with fits.open(AGN_TEMPLATE_FILE) as hdul:
        wave, flux = np.asarray(hdul[1].data["wa"], float), np.asarray(hdul[1].data["fl"], float)
    return np.interp(sed.REST_GRID, wave, flux, left=0.0, right=0.0)


def mean_nucleus(tilt_mean: float) -> np.ndarray:
    """The simulated quasars' mean nucleus: continuum and lines tilted by ``tilt_mean`` plus hot and
    warm dust at their mean strength (no host, reddening or absorption); f_lambda on ``sed.REST_GRID``."""
    from photoz_spark.sim import sed

    parts = sed.quasar_components()
    return (parts["continuum"] + parts["lines"]) * sed.tilt(tilt_mean) + parts["hot_dust"] + parts["warm_dust"]


def nu_f_nu_ratio(spectrum, wavelength: float, reference: float) -> float:
    """nu f_nu at ``wavelength`` over nu f_nu at ``reference`` (rest Angstrom) of an f_lambda spectrum
    on ``sed.REST_GRID``."""
    from photoz_spark.sim import sed

    at = np.interp([wavelength, reference], sed.REST_GRID, np.asarray(spectrum) * sed.REST_GRID)
    return float(at[0] / at[1])


def spectrum_colour(spectrum, blue_filter: str, red_filter: str, z) -> np.ndarray:
    """AB colour blue - red of a rest-frame f_lambda spectrum (on ``sed.REST_GRID``) seen at redshifts z.

    Args:
        spectrum: f_lambda on ``sed.REST_GRID``.
        blue_filter, red_filter: speclite filter names (the ``filter`` of conf/bands.yaml).
        z: redshifts.
    Returns:
        One colour per redshift.
    """
    import speclite.filters

    from photoz_spark.sim import photometry

    filters = [speclite.filters.load_filter(blue_filter), speclite.filters.load_filter(red_filter)]
    fluxes = np.array([photometry.filter_weights(filters, float(zi)) @ spectrum for zi in np.atleast_1d(z)])
    return colour(fluxes[:, 0], fluxes[:, 1])


def population_median_colour(q: dict, grid, n: int, blue: str, red: str, z_centres, half_width: float = 0.05,
                             seed: int = 11) -> np.ndarray:
    """Median noiseless AB colour blue - red of n quasars drawn with the ``sim.quasars`` settings q,
    in the bins z_centres +- half_width (NaN for an empty bin)."""
    from photoz_spark.sim.sky import draw_quasars

    drawn = draw_quasars(np.random.default_rng(seed), n, q, grid, np.random.default_rng(seed + 1))
    values = colour(drawn["flux"][:, grid.band_index(blue)], drawn["flux"][:, grid.band_index(red)])
    near = [np.abs(drawn["z"] - zc) < half_width for zc in np.atleast_1d(z_centres)]
    return np.array([np.nanmedian(values[m]) if np.any(m & np.isfinite(values)) else np.nan for m in near])


def population_colours(q: dict, grid, n: int, seed: int = 11) -> tuple[np.ndarray, dict]:
    """Noiseless AB colours (REFERENCE_COLOURS) of n quasars drawn with the ``sim.quasars`` settings q.

    Args:
        q: ``sim.quasars`` settings (z_nodes/z_weights and i_mag_max choose the sample).
        grid: the photometry grid.
        n: number of quasars.
        seed: seeds the population (seed) and diversity (seed + 1) streams.
    Returns:
        (redshifts, colour name -> per-quasar colour).
    """
    from photoz_spark.sim.sky import draw_quasars

    drawn = draw_quasars(np.random.default_rng(seed), n, q, grid, np.random.default_rng(seed + 1))
    flux = {b: drawn["flux"][:, grid.band_index(b)] for b, _, name in COLOURS if name in REFERENCE_COLOURS}
    flux["sdss_z"] = drawn["flux"][:, grid.band_index("sdss_z")]
    return drawn["z"], {name: colour(flux[blue], flux[red])
                        for blue, red, name in COLOURS if name in REFERENCE_COLOURS}


def stern_fraction(w1, w2, z, registry, z_max: float = 3.0) -> float:
    """Share of quasars at z < z_max with W1 - W2 (Vega) >= 0.8."""
    sel = np.asarray(z) < z_max
    c = colour(np.asarray(w1)[sel], np.asarray(w2)[sel], wise_vega_offset(registry))
    return float(np.mean(np.nan_to_num(c, nan=-99.0) >= STERN_CUT))


def colour_track_figure(sample: dict, registry, path, title: str = "", zero_points: dict | None = None) -> None:
    """Colour-redshift tracks (u-g, g-r, r-i, i-z, W1-W2): observed points, the true median and
    Richards et al. (2001)'s medians of real SDSS quasars.

    Args:
        sample: arrays ``z`` and, per band name, ``obs_<band>`` (catalog fluxes) and
            ``true_<band>`` (noiseless fluxes).
        registry: bands (for the WISE Vega offsets).
        path: the PNG to write.
        title: the figure's title.
        zero_points: catalog - AB mag per band (``sim.systematics.zero_point_mag``), to draw
            Richards et al.'s SDSS-system medians as AB colours.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(sample["z"])
    reference = reference_medians()
    edges = np.linspace(0.0, 5.5, 45)
    mids = 0.5 * (edges[1:] + edges[:-1])
    fig, axes = plt.subplots(len(COLOURS), 1, figsize=(7, 11), sharex=True)
    for ax, (blue, red, label) in zip(axes, COLOURS):
        offset = wise_vega_offset(registry) if blue.startswith("wise") else 0.0
        observed = colour(sample[f"obs_{blue}"], sample[f"obs_{red}"], offset)
        true = colour(sample[f"true_{blue}"], sample[f"true_{red}"], offset)
        ax.scatter(z, observed, s=1, alpha=0.15, color="0.4", rasterized=True, label="catalog fluxes")
        ax.plot(mids, binned_median(z, true, edges), color="C3", lw=2, label="median, noiseless")
        if label in reference:
            ax.plot(reference["z"], reference[label] - catalog_minus_ab(label, zero_points), "o", ms=3,
                    color="C2", label="median, real SDSS quasars (Richards+01)")
        if blue.startswith("wise"):
            ax.axhline(STERN_CUT, color="C0", ls="--", lw=1, label="Stern+12 AGN cut")
        lo, hi = np.nanpercentile(true, [0.5, 99.5]) if np.isfinite(true).any() else (-1, 3)
        ax.set_ylim(lo - 0.5, hi + 0.5)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8, markerscale=5)
    axes[-1].legend(loc="lower left", fontsize=8, markerscale=5)
    axes[-1].set_xlabel("true redshift")
    axes[0].set_title(title or "Simulated quasars: colour-redshift tracks")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
