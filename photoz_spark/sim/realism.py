"""Checks that the simulated quasars behave like real ones, and the colour-redshift figure.

The functions take plain arrays (fluxes in any linear unit) so the tests, the job summary
and a notebook all use the same definitions.
"""

from __future__ import annotations

import numpy as np

# (blue band, red band, label); WISE colours are converted to Vega as in Stern et al. (2012).
COLOURS = (("sdss_u", "sdss_g", "u-g"), ("sdss_g", "sdss_r", "g-r"), ("sdss_r", "sdss_i", "r-i"),
           ("sdss_i", "sdss_z", "i-z"), ("wise_w1", "wise_w2", "W1-W2 (Vega)"))
STERN_CUT = 0.8  # W1 - W2 (Vega) >= 0.8 selects AGN (Stern et al. 2012)


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


def stern_fraction(w1, w2, z, registry, z_max: float = 3.0) -> float:
    """Share of quasars at z < z_max with W1 - W2 (Vega) >= 0.8."""
    sel = np.asarray(z) < z_max
    c = colour(np.asarray(w1)[sel], np.asarray(w2)[sel], wise_vega_offset(registry))
    return float(np.mean(np.nan_to_num(c, nan=-99.0) >= STERN_CUT))


def colour_track_figure(sample: dict, registry, path, title: str = "") -> None:
    """Colour-redshift tracks (u-g, g-r, r-i, i-z, W1-W2): observed points and the true median.

    Args:
        sample: arrays ``z`` and, per band name, ``obs_<band>`` (catalog fluxes) and
            ``true_<band>`` (noiseless fluxes).
        registry: bands (for the WISE Vega offsets).
        path: the PNG to write.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(sample["z"])
    edges = np.linspace(0.0, 5.5, 45)
    mids = 0.5 * (edges[1:] + edges[:-1])
    fig, axes = plt.subplots(len(COLOURS), 1, figsize=(7, 11), sharex=True)
    for ax, (blue, red, label) in zip(axes, COLOURS):
        offset = wise_vega_offset(registry) if blue.startswith("wise") else 0.0
        observed = colour(sample[f"obs_{blue}"], sample[f"obs_{red}"], offset)
        true = colour(sample[f"true_{blue}"], sample[f"true_{red}"], offset)
        ax.scatter(z, observed, s=1, alpha=0.15, color="0.4", rasterized=True, label="catalog fluxes")
        ax.plot(mids, binned_median(z, true, edges), color="C3", lw=2, label="median, noiseless")
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
