"""Standardisation statistics per (band, channel), from partial moments that combine exactly.

Each partition reduces its rows to (count, mean, m2) per (band, channel), m2 being the sum of
squared deviations from the partition's own mean; partials combine pairwise with Chan et al.'s
formula. This is the sum / sum-of-squares / count idea without the cancellation that
``sumsq/n - mean**2`` suffers when the mean is large compared with the spread.

The representation the network sees (``features.representation``, recorded in stats.json so
that training, scoring and evaluation apply the same one through ``standardise``):

* ``flux``: the paper's (flux, flux_err) in uJy, standardised per (band, channel);
* ``asinh_mag``: asinh magnitudes (Lupton, Gunn & Szalay 1999) and their errors, in units of
  2.5/ln 10 mag: ``asinh(f / 2b)`` and ``sigma / sqrt(4b^2 + f^2)``, finite for zero and negative
  fluxes. The per-band softening ``b = 1.042 sigma_sky`` (their optimal choice) comes from the
  training split itself: ``sigma_sky = 1 / sqrt(mean inverse variance)`` of the band's observed
  errors, dominated by the faint, sky-limited sources (a 5-sigma depth m_5 means
  sigma_sky = 10^(-0.4 m_5) * 3631 Jy / 5). No depth has to be configured, so a real survey needs
  nothing new. These values are O(1) by construction (about 0-8 and 0-0.5) and are not rescaled.
* ``auto`` (chosen when the statistics are made, and recorded as the one chosen): ``asinh_mag``
  when some band of the set is noise-dominated for a typical object (its mean observed flux below
  ``FAINT_BAND_SIGNAL`` softenings, i.e. about 5 sigma_sky: GALEX, WISE W3/W4 for quasars), else
  ``flux``. Measured (bench/RESULTS.md): on deep LSST ugrizy (every band's mean above 65 b)
  standardised fluxes win at convergence; on all14 (GALEX FUV at 0.3 b, W4 at 1.3 b) asinh
  magnitudes do.
"""

from __future__ import annotations

import numpy as np

from photoz_spark.bands import BandSet
from photoz_spark.features.sequencing import CHANNELS, UJY_PER_JY, UNIT

REPRESENTATIONS = ("flux", "asinh_mag")
CHOICES = (*REPRESENTATIONS, "auto")   # what features.representation accepts
FAINT_BAND_SIGNAL = 5.0         # auto: a band whose mean flux is below this many softenings is noise-dominated
SOFTENING_PER_SIGMA = 1.042     # b / sigma_sky minimising the luptitude's variance (Lupton et al. 1999)
POGSON = 2.5 / np.log(10.0)     # 1.0857: magnitudes per unit of ln(flux)
AB_ZERO_POINT_UJY = 3631.0 * UJY_PER_JY


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
        {"count": int64 [T, C], "mean": float64 [T, C], "m2": float64 [T, C],
        "inv_var": float64 [T], the sum of 1 / flux_err^2 over the observed values (the softening
        of ``asinh_mag``)}.
    """
    observed = np.asarray(observed, dtype=bool)
    x = _steps(features, observed.shape[1])
    mask = np.broadcast_to(observed[:, :, None], x.shape)
    if rows is not None:
        mask = mask & np.asarray(rows, dtype=bool)[:, None, None]
    count = mask.sum(axis=0).astype(np.int64)
    mean = np.where(mask, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    m2 = (np.where(mask, x - mean, 0.0) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_var = np.where(mask[:, :, 1], 1.0 / x[:, :, 1] ** 2, 0.0).sum(axis=0)
    return {"count": count, "mean": mean, "m2": m2, "inv_var": inv_var}


def combine_moments(a: dict, b: dict) -> dict:
    """Combine two partial moments (Chan, Golub & LeVeque 1979); order does not matter."""
    na, nb = np.asarray(a["count"], dtype=np.int64), np.asarray(b["count"], dtype=np.int64)
    mean_a, mean_b = np.asarray(a["mean"], dtype=np.float64), np.asarray(b["mean"], dtype=np.float64)
    n = na + nb
    share_b = nb / np.maximum(n, 1)
    delta = mean_b - mean_a
    out = {
        "count": n,
        "mean": mean_a + delta * share_b,
        "m2": np.asarray(a["m2"], dtype=np.float64) + np.asarray(b["m2"], dtype=np.float64)
        + delta**2 * na * share_b,
    }
    if "inv_var" in a and "inv_var" in b:
        out["inv_var"] = np.asarray(a["inv_var"], dtype=np.float64) + np.asarray(b["inv_var"], dtype=np.float64)
    return out


def softening(m: dict) -> np.ndarray:
    """Per-band asinh softening b (uJy) from moments: 1.042 / sqrt(mean inverse variance); 1 where unobserved."""
    n_err = np.asarray(m["count"], dtype=np.float64)[:, 1]
    inv_var = np.asarray(m["inv_var"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = SOFTENING_PER_SIGMA * np.sqrt(n_err / inv_var)
    return np.where(np.isfinite(b) & (b > 0), b, 1.0)


def luptitude(flux: np.ndarray, softening_ujy: np.ndarray | float) -> np.ndarray:
    """AB asinh magnitude of a flux in uJy (finite for zero and negative fluxes).

    Args:
        flux: flux in uJy.
        softening_ujy: the band's softening b in uJy.

    Returns:
        -2.5/ln10 * (asinh(f / 2b) + ln(b / 3631 Jy)); equals the AB magnitude for f >> b.
    """
    b = np.asarray(softening_ujy, dtype=np.float64)
    return -POGSON * (np.arcsinh(np.asarray(flux, dtype=np.float64) / (2 * b)) + np.log(b / AB_ZERO_POINT_UJY))


def faintest_band(m: dict, band_set: BandSet) -> tuple[str, float]:
    """The band whose mean observed flux is the fewest softenings (``auto``'s test).

    Args:
        m: moments with ``inv_var`` (``moments`` / ``combine_moments``).
        band_set: the bands the moments are of.

    Returns:
        (band name, mean flux / softening); ("", inf) when no band is observed.
    """
    observed = np.asarray(m["count"])[:, 0] > 0
    if not observed.any():
        return "", float("inf")
    signal = np.where(observed, np.asarray(m["mean"], dtype=np.float64)[:, 0] / softening(m), np.inf)
    i = int(np.argmin(signal))
    return band_set.names[i], float(signal[i])


def resolve_representation(representation: str, faintest_signal: float) -> str:
    """``auto`` made concrete; ``flux``/``asinh_mag`` as given.

    Args:
        representation: one of ``CHOICES``.
        faintest_signal: the faintest band's mean flux in softenings (``faintest_band``).

    Returns:
        ``asinh_mag`` if that is below ``FAINT_BAND_SIGNAL`` softenings, else ``flux``.
    """
    if representation != "auto":
        return representation
    return "asinh_mag" if faintest_signal < FAINT_BAND_SIGNAL else "flux"


def stats_from_moments(m: dict, band_set: BandSet, representation: str = "flux") -> dict:
    """JSON-serialisable statistics from (combined) moments.

    The standard deviation is the population one (numpy's default, ddof=0). A (band, channel)
    with no observed value gets mean 0 and std 1, one with zero spread std 1, so that
    ``standardise`` never divides by zero; ``count`` tells them apart.

    Args:
        m: moments as from ``moments`` / ``combine_moments``, shaped [T, C].
        band_set: the bands the moments are of, in sequence order.
        representation: what ``standardise`` feeds the network: ``flux``, ``asinh_mag`` or
            ``auto`` (one of the two, by ``resolve_representation``).

    Returns:
        {"band_set", "bands", "channels", "unit", "representation" (flux or asinh_mag),
        "count", "mean", "std" (the last three nested lists [T][C], of the fluxes), "softening"
        ([T], uJy; only with moments that hold ``inv_var``), "faintest_band" ([name, mean flux /
        softening]; with ``inv_var`` and an observed band)}.
    """
    if representation not in CHOICES:
        raise ValueError(f"features.representation must be one of {', '.join(CHOICES)}, "
                         f"got {representation!r}")
    if representation != "flux" and "inv_var" not in m:  # the softening, and auto's test, need them
        raise ValueError(f"{representation} needs the inverse-variance moments: rebuild the features")
    count = np.asarray(m["count"], dtype=np.int64)
    if count.shape != (len(band_set), len(CHANNELS)):
        raise ValueError(f"moments are {count.shape}, band set {band_set.name} needs "
                         f"({len(band_set)}, {len(CHANNELS)})")
    faintest = faintest_band(m, band_set) if "inv_var" in m else ("", float("inf"))
    chosen = resolve_representation(representation, faintest[1])
    std = np.sqrt(np.asarray(m["m2"], dtype=np.float64) / np.maximum(count, 1))
    stats = {
        "band_set": band_set.name,
        "bands": band_set.names,
        "channels": list(CHANNELS),
        "unit": UNIT,
        "representation": chosen,
        "count": count.tolist(),
        "mean": np.where(count > 0, m["mean"], 0.0).tolist(),
        "std": np.where((count > 0) & (std > 0), std, 1.0).tolist(),
    }
    if "inv_var" in m:
        stats["softening"] = softening(m).tolist()
    if faintest[0]:  # (none when nothing is observed: no Infinity in stats.json)
        stats["faintest_band"] = [faintest[0], round(faintest[1], 3)]
    return stats


def compute_stats(features: np.ndarray, observed: np.ndarray, band_set: BandSet,
                  rows: np.ndarray | None = None, representation: str = "flux") -> dict:
    """Mean and std per (band, channel) of the observed values of ``rows`` (in memory).

    Args:
        features, observed, rows: see ``moments``.
        band_set: the bands of the sequence.
        representation: see ``stats_from_moments``.

    Returns:
        The statistics dict of ``stats_from_moments``.
    """
    return stats_from_moments(moments(features, observed, rows), band_set, representation)


def standardise(features: np.ndarray, observed: np.ndarray, stats: dict) -> np.ndarray:
    """The network's input in the statistics' representation; unobserved steps become 0.

    ``flux`` (also a stats.json without ``representation``): (x - mean) / std per (band, channel),
    0 being the mean. ``asinh_mag``: (asinh(f / 2b), sigma / sqrt(4b^2 + f^2)) per band, b the
    band's ``softening`` (see the module docstring).

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
    representation = stats.get("representation", "flux")
    if representation == "asinh_mag":
        b = np.asarray(stats["softening"], dtype=np.float64)
        with np.errstate(invalid="ignore"):  # NaN at unobserved steps, replaced below
            values = np.stack([np.arcsinh(x[..., 0] / (2 * b)), x[..., 1] / np.hypot(2 * b, x[..., 0])], axis=-1)
    elif representation == "flux":
        values = (x - mean) / std
    else:
        raise ValueError(f"stats.json has representation {representation!r}; this version knows "
                         f"{', '.join(REPRESENTATIONS)}")
    scaled = np.where(observed[:, :, None], values, 0.0)
    return scaled.reshape(len(x), scaled.shape[1] * scaled.shape[2]).astype(np.float32)  # 0 rows too
