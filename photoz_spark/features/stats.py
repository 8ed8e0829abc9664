"""Standardisation statistics per (band, channel), from partial moments that combine exactly.

Each partition reduces its rows to (count, mean, m2) per (band, channel), m2 being the sum of
squared deviations from the partition's own mean; partials combine pairwise with Chan et al.'s
formula. This is the sum / sum-of-squares / count idea without the cancellation that
``sumsq/n - mean**2`` suffers when the mean is large compared with the spread.
"""

from __future__ import annotations

import numpy as np

from photoz_spark.bands import BandSet
from photoz_spark.features.sequencing import CHANNELS, UNIT


def _steps(features: np.ndarray, n_steps: int) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != n_steps * len(CHANNELS):
        raise ValueError(f"features must be [N, {n_steps}*{len(CHANNELS)}], got shape {features.shape}")
    return features.reshape(len(features), n_steps, len(CHANNELS)).astype(np.float64)


def moments(features: np.ndarray, observed: np.ndarray, rows: np.ndarray | None = None) -> dict:
    """Partial moments of the observed values per (band, channel).

    Args:
        features: float [N, T*C] from ``sequence``.
        observed: bool [N, T].
        rows: bool [N] of the rows to include (e.g. the training split); None = all.

    Returns:
        {"count": int64 [T, C], "mean": float64 [T, C], "m2": float64 [T, C]}.
    """
    observed = np.asarray(observed, dtype=bool)
    x = _steps(features, observed.shape[1])
    mask = np.broadcast_to(observed[:, :, None], x.shape)
    if rows is not None:
        mask = mask & np.asarray(rows, dtype=bool)[:, None, None]
    count = mask.sum(axis=0).astype(np.int64)
    mean = np.where(mask, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    m2 = (np.where(mask, x - mean, 0.0) ** 2).sum(axis=0)
    return {"count": count, "mean": mean, "m2": m2}


def combine_moments(a: dict, b: dict) -> dict:
    """Combine two partial moments (Chan, Golub & LeVeque 1979); order does not matter."""
    na, nb = np.asarray(a["count"], dtype=np.int64), np.asarray(b["count"], dtype=np.int64)
    mean_a, mean_b = np.asarray(a["mean"], dtype=np.float64), np.asarray(b["mean"], dtype=np.float64)
    n = na + nb
    share_b = nb / np.maximum(n, 1)
    delta = mean_b - mean_a
    return {
        "count": n,
        "mean": mean_a + delta * share_b,
        "m2": np.asarray(a["m2"], dtype=np.float64) + np.asarray(b["m2"], dtype=np.float64)
        + delta**2 * na * share_b,
    }


def stats_from_moments(m: dict, band_set: BandSet) -> dict:
    """JSON-serialisable statistics from (combined) moments.

    The standard deviation is the population one (numpy's default, ddof=0). A (band, channel)
    with no observed value gets mean 0 and std 1, one with zero spread std 1, so that
    ``standardise`` never divides by zero; ``count`` tells them apart.

    Args:
        m: moments as from ``moments`` / ``combine_moments``, shaped [T, C].
        band_set: the bands the moments are of, in sequence order.

    Returns:
        {"band_set", "bands", "channels", "unit", "count", "mean", "std"}, the last three
        nested lists [T][C].
    """
    count = np.asarray(m["count"], dtype=np.int64)
    if count.shape != (len(band_set), len(CHANNELS)):
        raise ValueError(f"moments are {count.shape}, band set {band_set.name} needs "
                         f"({len(band_set)}, {len(CHANNELS)})")
    std = np.sqrt(np.asarray(m["m2"], dtype=np.float64) / np.maximum(count, 1))
    return {
        "band_set": band_set.name,
        "bands": band_set.names,
        "channels": list(CHANNELS),
        "unit": UNIT,
        "count": count.tolist(),
        "mean": np.where(count > 0, m["mean"], 0.0).tolist(),
        "std": np.where((count > 0) & (std > 0), std, 1.0).tolist(),
    }


def compute_stats(features: np.ndarray, observed: np.ndarray, band_set: BandSet,
                  rows: np.ndarray | None = None) -> dict:
    """Mean and std per (band, channel) of the observed values of ``rows`` (in memory).

    Args:
        features, observed, rows: see ``moments``.
        band_set: the bands of the sequence.

    Returns:
        The statistics dict of ``stats_from_moments``.
    """
    return stats_from_moments(moments(features, observed, rows), band_set)


def standardise(features: np.ndarray, observed: np.ndarray, stats: dict) -> np.ndarray:
    """(x - mean) / std per (band, channel); unobserved steps become 0, the mean.

    Args:
        features: float [N, T*C] raw features from ``sequence``.
        observed: bool [N, T].
        stats: a statistics dict from ``compute_stats`` (or a stats.json file).

    Returns:
        float32 [N, T*C].
    """
    mean, std = np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)
    observed = np.asarray(observed, dtype=bool)
    if observed.shape[1:] != mean.shape[:1]:
        raise ValueError(f"observed has {observed.shape[1:]} steps, the statistics {len(mean)}")
    x = _steps(features, len(mean))
    scaled = np.where(observed[:, :, None], (x - mean) / std, 0.0)
    return scaled.reshape(len(x), scaled.shape[1] * scaled.shape[2]).astype(np.float32)  # 0 rows too
