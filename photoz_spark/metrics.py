"""Photo-z point and probabilistic metrics (numpy), as defined by the LSTM-MDNz paper.

dz = z_phot - z_spec, normalised by (1 + z_spec).
"""

from __future__ import annotations

import numpy as np

OUTLIER_CUT = 0.15


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


def point_metrics(z_phot, z_spec, crps=None) -> dict:
    """N, sigma_NMAD, f_out, bias, MSE, MAE (and mean CRPS when given): Table 1 of the paper."""
    z_phot, z_spec = np.asarray(z_phot, float), np.asarray(z_spec, float)
    if len(z_spec) == 0:
        raise ValueError("no objects to compute metrics on")
    out = {"n": len(z_spec), "sigma_nmad": sigma_nmad(z_phot, z_spec),
           "f_out": outlier_rate(z_phot, z_spec), "bias": bias(z_phot, z_spec),
           "mse": float(np.mean((z_phot - z_spec) ** 2)), "mae": float(np.mean(np.abs(z_phot - z_spec)))}
    if crps is not None:
        out["crps"] = float(np.mean(crps))
    return out
