"""The evaluation figures, one function each (numbers as in the LSTM-MDNz paper).

Fig. 3 ``zphot_figure``, Fig. 4 ``crps_figure``, Fig. 5 ``example_pdfs_figure``, Fig. 6
``pit_figure``, Fig. 7 ``zphot_grid_figure`` (the band-set ablation). Each writes one PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster driver
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from photoz_spark.metrics import OUTLIER_CUT, completeness_curve

DPI = 110
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")   # 0.3, 2, 10 instead of 3x10^-1 on log axes


def _save(fig, path: Path, rect=(0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def axis_limit(z_spec, z_phot) -> float:
    """Upper redshift of the z_phot-z_spec axes: the data's range rounded up to 0.5."""
    top = max(float(np.max(z_spec)), float(np.quantile(z_phot, 0.999)))
    return max(1.0, math.ceil(top * 2.0 + 0.2) / 2.0)


def _zphot_panel(ax, z_spec, z_phot, limit: float, title: str, metrics: dict | None):
    gridsize = int(np.clip(np.sqrt(len(z_spec)), 15, 80))  # a few hundred objects still show a density
    art = ax.hexbin(z_spec, z_phot, gridsize=gridsize, extent=(0, limit, 0, limit), norm=LogNorm(), mincnt=1,
                    cmap="viridis")
    z = np.array([0.0, limit])
    ax.plot(z, z, "k-", lw=0.8, label="z_phot = z_spec")
    ax.plot(z, z + OUTLIER_CUT * (1 + z), "r--", lw=0.8, label=f"±{OUTLIER_CUT} (1 + z_spec)")
    ax.plot(z, z - OUTLIER_CUT * (1 + z), "r--", lw=0.8)
    ax.set(xlabel="z_spec", ylabel="z_phot (PDF mean)", title=title, xlim=(0, limit), ylim=(0, limit))
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    if metrics:
        ax.text(0.97, 0.03, f"N = {metrics['n']:,}\nσ_NMAD = {metrics['sigma_nmad']:.3f}\n"
                            f"f_out = {100 * metrics['f_out']:.1f} %", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    return art


def zphot_figure(z_spec, z_phot, path: Path, title: str, metrics: dict | None = None) -> Path:
    """Fig. 3: z_phot vs z_spec density (log colour) with the ±0.15 (1 + z) outlier lines.

    Args:
        z_spec, z_phot: per-object redshifts.
        path: the PNG to write.
        title: the panel title.
        metrics: n, sigma_nmad, f_out to print in a corner (optional).
    """
    fig, ax = plt.subplots(figsize=(5.8, 5))
    art = _zphot_panel(ax, z_spec, z_phot, axis_limit(z_spec, z_phot), title, metrics)
    _count_colorbar(fig, art, ax)
    return _save(fig, path)


def _count_colorbar(fig, art, ax, **kwargs):
    bar = fig.colorbar(art, ax=ax, label="objects per cell", **kwargs)
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bar.ax.yaxis.set_major_formatter(PLAIN)
    bar.ax.yaxis.set_minor_formatter(NullFormatter())


def zphot_grid_figure(panels: list[dict], path: Path, title: str) -> Path:
    """Fig. 7: one z_phot-z_spec panel per band set, on common axes.

    Args:
        panels: dicts with label, z_spec, z_phot and metrics (n, sigma_nmad, f_out).
        path: the PNG to write.
        title: the figure title.
    """
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    limit = max(axis_limit(p["z_spec"], p["z_phot"]) for p in panels)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.1 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        art = _zphot_panel(ax, panel["z_spec"], panel["z_phot"], limit, panel["label"], panel["metrics"])
        _count_colorbar(fig, art, ax, fraction=0.046, pad=0.04)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def crps_figure(crps, path: Path, title: str, crps_calibrated=None, calibrated_label: str = "") -> Path:
    """Fig. 4: the distribution of per-object CRPS (log bins) with its mean and median marked.

    Args:
        crps: per-object CRPS of the network's PDFs.
        path: the PNG to write.
        title: the panel title.
        crps_calibrated: per-object CRPS after recalibration, drawn as a second outline (optional).
        calibrated_label: that outline's legend label.
    """
    crps = np.asarray(crps, float)
    values = crps if crps_calibrated is None else np.concatenate([crps, crps_calibrated])
    positive = values[values > 0]
    lo, hi = (positive.min(), positive.max()) if len(positive) else (1e-4, 1.0)
    bins = np.geomspace(lo, hi * 1.0001, 40)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.hist(np.clip(crps, lo, None), bins=bins, color="C0", alpha=0.6, label="network PDFs")
    ax.axvline(crps.mean(), color="C0", lw=1.5, label=f"its mean {crps.mean():.4f}")
    ax.axvline(np.median(crps), color="C0", lw=1.2, ls=":", label=f"its median {np.median(crps):.4f}")
    if crps_calibrated is not None:
        cal = np.asarray(crps_calibrated, float)
        ax.hist(np.clip(cal, lo, None), bins=bins, histtype="step", color="C3", lw=1.3, label=calibrated_label)
        ax.axvline(cal.mean(), color="C3", lw=1.5, ls="--", label=f"its mean {cal.mean():.4f}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="CRPS (log scale)", ylabel="objects", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def _mixture_curves(example, grid):
    from scipy.stats import norm

    t = (grid[:, None] - example.mu[None, :]) / example.sigma[None, :]
    pdf = (example.w * norm.pdf(t) / example.sigma).sum(-1)
    cdf = (example.w * norm.cdf(t)).sum(-1)
    return pdf, cdf


def _calibrated_curves(example, grid, cdf, calibration):
    """PDF and CDF of the recalibrated example: a PIT map remaps the CDF; a mixture calibration
    (anything with ``apply_numpy``) gives another mixture."""
    if hasattr(calibration, "remap"):
        cdf_cal = calibration.remap(cdf)
        return np.gradient(cdf_cal, grid), cdf_cal
    w, mu, sigma = calibration.apply_numpy(example.w, example.mu, example.sigma)
    return _mixture_curves(SimpleNamespace(w=w, mu=mu, sigma=sigma), grid)


def _example_range(example) -> tuple[float, float]:
    """The z range where the PDF lives (its 0.2-99.8 % quantiles) and z_spec, z_phot, with a margin."""
    broad = np.linspace(float(np.min(example.mu - 6 * example.sigma)), float(np.max(example.mu + 6 * example.sigma)),
                        4000)
    _, cdf = _mixture_curves(example, broad)
    lo = min(float(np.interp(0.002, cdf, broad)), example.z_spec, example.z_phot)
    hi = max(float(np.interp(0.998, cdf, broad)), example.z_spec, example.z_phot)
    margin = 0.15 * (hi - lo) + 0.02
    return max(0.0, lo - margin), hi + margin


def example_pdfs_figure(examples: list, path: Path, title: str, calibration=None,
                        calibrated_label: str = "recalibrated") -> Path:
    """Fig. 5: example PDFs (top row) and CDFs (bottom row) with z_spec and z_phot marked.

    Args:
        examples: ``predict.Example`` objects (mixture weights, means, stds, z_spec, z_phot).
        path: the PNG to write.
        title: the figure title.
        calibration: a PitCalibration or MixtureCalibration: also draw the recalibrated PDF and
            CDF (optional).
        calibrated_label: their legend label.
    """
    n = max(1, len(examples))
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n, 5.6), squeeze=False)
    for j, example in enumerate(examples):
        grid = np.linspace(*_example_range(example), 600)
        pdf, cdf = _mixture_curves(example, grid)
        top, bottom = axes[0, j], axes[1, j]
        top.plot(grid, pdf, "C0-", label="PDF")
        bottom.plot(grid, cdf, "C0-", label="CDF")
        if calibration is not None:
            pdf_cal, cdf_cal = _calibrated_curves(example, grid, cdf, calibration)
            top.plot(grid, pdf_cal, "C3--", lw=1, label=calibrated_label)
            bottom.plot(grid, cdf_cal, "C3--", lw=1, label=calibrated_label)
        for ax in (top, bottom):
            ax.axvline(example.z_spec, color="k", lw=1, label="z_spec")
            ax.axvline(example.z_phot, color="C1", lw=1.2, ls=":", label="z_phot (PDF mean)")
            ax.set_xlim(grid[0], grid[-1])
        top.set(title=f"z_spec {example.z_spec:.3f}, z_phot {example.z_phot:.3f}", ylabel="p(z)" if j == 0 else None)
        top.set_ylim(bottom=0)
        bottom.set(xlabel="z", ylabel="P(< z)" if j == 0 else None, ylim=(0, 1.02))
    axes[1, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return _save(fig, path)


def pit_figure(pit, path: Path, title: str, pit_calibrated=None, calibrated_label: str = "recalibrated") -> Path:
    """Fig. 6: PIT histogram (left) and Q-Q plot against U(0, 1) (right); before and after recalibration.

    Args:
        pit: PIT values of the network's PDFs.
        path: the PNG to write.
        title: the figure title.
        pit_calibrated: PIT values after recalibration (optional).
        calibrated_label: their legend label.
    """
    series = [("network PDFs", np.asarray(pit, float), "C0")]
    if pit_calibrated is not None:
        series.append((calibrated_label, np.asarray(pit_calibrated, float), "C3"))
    fig, (hist, qq) = plt.subplots(1, 2, figsize=(10, 4.6))
    bins = np.linspace(0, 1, 21)
    for label, values, colour in series:
        density, _ = np.histogram(values, bins=bins, density=True)
        hist.stairs(density, bins, baseline=None, lw=1.5, color=colour, label=label)  # no edge drawn down to 0
        levels = (np.arange(len(values)) + 0.5) / max(len(values), 1)
        qq.plot(levels, np.sort(values), color=colour, lw=1.5, label=label)
    hist.axhline(1.0, color="k", ls="--", lw=0.8, label="uniform (calibrated)")
    hist.set(xlabel="PIT", ylabel="density", xlim=(0, 1), title="PIT histogram")
    hist.set_ylim(bottom=0)
    qq.plot([0, 1], [0, 1], "k--", lw=0.8, label="uniform (calibrated)")
    qq.set(xlabel="U(0, 1) quantile", ylabel="PIT quantile", xlim=(0, 1), ylim=(0, 1), title="PIT Q-Q")
    qq.set_aspect("equal")
    handles, labels = qq.get_legend_handles_labels()   # one legend below both panels: none covers data
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(title)
    return _save(fig, path, rect=(0, 0.07, 1, 1))


def completeness_figure(z_phot, z_spec, z_conf, path: Path, title: str) -> Path:
    """f_out (left) and sigma_NMAD (right) of the objects kept by a zConf cut, against the kept fraction.

    Args:
        z_phot, z_spec, z_conf: point estimates, true redshifts and zConf values [N].
        path: the PNG to write.
        title: the figure title.
    """
    fractions = np.linspace(1.0, 0.1, 37)
    rows = completeness_curve(z_phot, z_spec, z_conf, fractions)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot(fractions, [100 * r["f_out"] for r in rows], "C3-", lw=1.5)
    left.set(xlabel="fraction kept (highest zConf first)", ylabel="f_out [%]", title="outlier rate")
    right.plot(fractions, [r["sigma_nmad"] for r in rows], "C0-", lw=1.5)
    right.set(xlabel="fraction kept (highest zConf first)", ylabel="σ_NMAD", title="scatter")
    for ax in (left, right):
        ax.set_xlim(1.0, 0.1)   # completeness falls to the right
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
