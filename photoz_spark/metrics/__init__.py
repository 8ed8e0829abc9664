"""Photo-z point and probabilistic metrics (numpy), as defined by the LSTM-MDNz paper.

dz = z_phot - z_spec, normalised by (1 + z_spec). Point metrics: sigma_NMAD, outlier rate,
bias, MSE, MAE, catastrophic rate. Probabilistic: the mean of per-object CRPS values and PIT
values' KS and Cramer-von Mises distances from U(0, 1) (the per-object values themselves are the
model's business: ``model.scores``). ``metrics_by_z_bin`` gives every metric per z_spec bin,
``completeness_curve`` sigma_NMAD and f_out of the objects kept by a cut on zConf.
Numbers in, numbers out: this package (and ``metrics.figures``) never imports the network.
"""

from __future__ import annotations

import numpy as np

OUTLIER_CUT = 0.15
CATASTROPHIC_CUT = 1.0


def _dz(z_phot, z_spec) -> np.ndarray:
    z_phot, z_spec = np.asarray(z_phot, float), np.asarray(z_spec, float)
    return (z_phot - z_spec) / (1.0 + z_spec)


def sigma_nmad(z_phot, z_spec) -> float:
    """1.48 * median(|dz| / (1 + z_spec)), as the paper defines it (no median subtraction)."""
    return float(1.48 * np.median(np.abs(_dz(z_phot, z_spec))))


def outlier_rate(z_phot, z_spec, cut: float = OUTLIER_CUT) -> float:
    """Share of objects with |dz| / (1 + z_spec) > cut."""
    return float(np.mean(np.abs(_dz(z_phot, z_spec)) > cut))


def bias(z_phot, z_spec) -> float:
    """median(dz / (1 + z_spec))."""
    return float(np.median(_dz(z_phot, z_spec)))


def mse(z_phot, z_spec) -> float:
    """mean(dz^2), dz not normalised."""
    return float(np.mean((np.asarray(z_phot, float) - np.asarray(z_spec, float)) ** 2))


def mae(z_phot, z_spec) -> float:
    """mean(|dz|), dz not normalised."""
    return float(np.mean(np.abs(np.asarray(z_phot, float) - np.asarray(z_spec, float))))


def catastrophic_rate(z_phot, z_spec, cut: float = CATASTROPHIC_CUT) -> float:
    """Share of objects with |dz| > cut (absolute, not normalised: a wrong emission-line identification)."""
    return float(np.mean(np.abs(np.asarray(z_phot, float) - np.asarray(z_spec, float)) > cut))


def point_metrics(z_phot, z_spec, crps=None) -> dict:
    """N, sigma_NMAD, f_out, bias, MSE, MAE (and mean CRPS when given): Table 1 of the paper."""
    z_phot, z_spec = np.asarray(z_phot, float), np.asarray(z_spec, float)
    if len(z_spec) == 0:
        raise ValueError("no objects to compute metrics on")
    out = {"n": len(z_spec), "sigma_nmad": sigma_nmad(z_phot, z_spec),
           "f_out": outlier_rate(z_phot, z_spec), "bias": bias(z_phot, z_spec),
           "mse": mse(z_phot, z_spec), "mae": mae(z_phot, z_spec)}
    if crps is not None:
        out["crps"] = float(np.mean(crps))
    return out


def crps_summary(crps) -> dict:
    """Mean and median of per-object CRPS values."""
    crps = np.asarray(crps, float)
    return {"crps_mean": float(np.mean(crps)), "crps_median": float(np.median(crps))}


def pit_statistics(pit) -> dict:
    """Kolmogorov-Smirnov and Cramer-von Mises distances of PIT values from U(0, 1), with p-values.

    KS D = max_i max(i/n - u_(i), u_(i) - (i-1)/n); CvM W^2 = 1/(12n) + sum_i ((2i-1)/(2n) - u_(i))^2,
    u_(i) the sorted PIT values. A calibrated PDF gives uniform PIT: both near 0.
    """
    from scipy import stats

    pit = np.asarray(pit, float)
    if len(pit) < 2:
        return {"pit_ks": float("nan"), "pit_ks_p": float("nan"), "pit_cvm": float("nan"), "pit_cvm_p": float("nan")}
    ks = stats.kstest(pit, "uniform")
    cvm = stats.cramervonmises(pit, "uniform")
    return {"pit_ks": float(ks.statistic), "pit_ks_p": float(ks.pvalue),
            "pit_cvm": float(cvm.statistic), "pit_cvm_p": float(cvm.pvalue)}


def all_metrics(z_phot, z_spec, crps=None, pit=None) -> dict:
    """Every metric of one sample: ``point_metrics`` plus f_cat, and CRPS / PIT summaries when given.

    Args:
        z_phot, z_spec: point estimates and true redshifts [N].
        crps: per-object CRPS [N] or None.
        pit: per-object PIT values [N] or None.

    Returns:
        n, sigma_nmad, f_out, bias, mse, mae, f_cat (+ crps, crps_mean, crps_median; + pit_ks,
        pit_ks_p, pit_cvm, pit_cvm_p). ``crps`` equals ``crps_mean`` (Table 1's name).

    Raises:
        ValueError: no objects.
    """
    out = point_metrics(z_phot, z_spec, crps)
    out["f_cat"] = catastrophic_rate(z_phot, z_spec)
    if crps is not None:
        out.update(crps_summary(crps))
    if pit is not None:
        out.update(pit_statistics(pit))
    return out


def metrics_by_z_bin(z_phot, z_spec, edges, crps=None, pit=None) -> list[dict]:
    """``all_metrics`` per z_spec bin: one row per bin [edges[j], edges[j+1]) (the last bin closed).

    Args:
        z_phot, z_spec: point estimates and true redshifts [N].
        edges: increasing bin edges (at least two).
        crps, pit: per-object values [N] or None.

    Returns:
        Rows with z_lo, z_hi and the metrics; an empty bin has n = 0 and only z_lo, z_hi, n.
        Objects outside [edges[0], edges[-1]] are in no row.
    """
    edges = np.asarray(edges, float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"z bin edges must be at least two increasing values, got {edges.tolist()}")
    z_phot, z_spec = np.asarray(z_phot, float), np.asarray(z_spec, float)
    index = np.searchsorted(edges, z_spec, side="right") - 1
    index[z_spec == edges[-1]] = len(edges) - 2
    rows = []
    for j in range(len(edges) - 1):
        sel = index == j
        row = {"z_lo": float(edges[j]), "z_hi": float(edges[j + 1]), "n": int(sel.sum())}
        if row["n"]:
            row.update(all_metrics(z_phot[sel], z_spec[sel], None if crps is None else np.asarray(crps)[sel],
                                   None if pit is None else np.asarray(pit)[sel]))
        rows.append(row)
    return rows


COMPLETENESS_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.5)


def completeness_curve(z_phot, z_spec, z_conf, fractions=COMPLETENESS_FRACTIONS) -> list[dict]:
    """sigma_NMAD and f_out of the objects kept by a zConf cut, per kept fraction (completeness).

    Keeping a fraction f means keeping the ceil(f N) objects of highest zConf (ties by order),
    i.e. the cut zConf >= z_conf_min, the lowest zConf kept.

    Args:
        z_phot, z_spec, z_conf: point estimates, true redshifts and zConf values [N].
        fractions: kept fractions in (0, 1].

    Returns:
        One row per fraction: kept (the fraction), n, z_conf_min, sigma_nmad, f_out.
    """
    z_phot, z_spec, z_conf = (np.asarray(a, float) for a in (z_phot, z_spec, z_conf))
    if not len(z_spec):
        raise ValueError("no objects to compute a completeness curve on")
    order = np.argsort(-z_conf, kind="stable")
    rows = []
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"kept fractions must lie in (0, 1], got {f}")
        keep = order[:int(np.ceil(f * len(order) - 1e-9))]
        rows.append({"kept": float(f), "n": len(keep), "z_conf_min": float(z_conf[keep].min()),
                     "sigma_nmad": sigma_nmad(z_phot[keep], z_spec[keep]), "f_out": outlier_rate(z_phot[keep], z_spec[keep])})
    return rows
