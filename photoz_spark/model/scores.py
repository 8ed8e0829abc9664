"""Per-object scores of predicted PDFs against known redshifts: point estimate, CRPS, PIT, zConf.

Training (its validation and test splits) and evaluation (every split of a labelled catalog)
both compute them here, so the numbers they report come from one function. ``metrics`` then
turns these arrays into the paper's numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from photoz_spark.model import calibration as cal
from photoz_spark.model import mdn
from photoz_spark.model.calibration import Calibration

SCORES = ("z_spec", "z_phot", "crps", "pit", "z_conf")
CALIBRATED_SCORES = ("cal_z_phot", "cal_crps", "cal_pit", "cal_z_conf")


def object_scores(w, mu, sigma, z, calibration: Calibration | None = None) -> dict[str, np.ndarray]:
    """Per-object z_spec, z_phot (mixture mean), CRPS, PIT and zConf of one batch of mixtures.

    Args:
        w, mu, sigma: [N, K] mixture weights, means and standard deviations (torch).
        z: [N] spectroscopic redshifts (torch, on the mixture's device).
        calibration: also ``cal_z_phot``, ``cal_crps``, ``cal_pit``, ``cal_z_conf``: the same
            for the recalibrated PDFs (either method).

    Returns:
        Name -> numpy array [N] (SCORES, plus CALIBRATED_SCORES with a calibration).
    """
    z_phot = mdn.mean(w, mu)
    scores = {"z_spec": z, "z_phot": z_phot, "crps": mdn.crps(w, mu, sigma, z),
              "pit": mdn.pit(w, mu, sigma, z), "z_conf": mdn.z_conf(w, mu, sigma, z_phot)}
    if calibration is not None:
        w, mu, sigma, calibration = cal.calibrated_mixture(w, mu, sigma, calibration)
        cal_z_phot = cal.mean_std(w, mu, sigma, calibration)[0]
        scores.update(cal_z_phot=cal_z_phot, cal_crps=cal.crps(w, mu, sigma, z, calibration),
                      cal_pit=cal.pit(w, mu, sigma, z, calibration),
                      cal_z_conf=cal.z_conf(w, mu, sigma, cal_z_phot, calibration))
    return {k: v.detach().cpu().numpy() for k, v in scores.items()}


def concat_scores(parts: list[dict], calibrated: bool) -> dict[str, np.ndarray]:
    """Join the batches of ``object_scores`` into float64 arrays (empty arrays for no rows)."""
    keys = SCORES + (CALIBRATED_SCORES if calibrated else ())
    return {k: np.concatenate([p[k] for p in parts]).astype(float) if parts else np.zeros(0) for k in keys}


def mixture_crps(w, mu, sigma, z_spec) -> np.ndarray:
    """Exact CRPS [N] of Gaussian mixtures ([N, K] weights, means, stds as arrays) at z_spec [N] (mdn.crps)."""
    w, mu, sigma, z = (torch.as_tensor(np.asarray(a, np.float64)) for a in (w, mu, sigma, z_spec))
    return mdn.crps(w, mu, sigma, z).numpy()


def mixture_pit(w, mu, sigma, z_spec) -> np.ndarray:
    """PIT values [N]: each mixture's CDF at its z_spec (mdn.pit), from arrays."""
    w, mu, sigma, z = (torch.as_tensor(np.asarray(a, np.float64)) for a in (w, mu, sigma, z_spec))
    return mdn.pit(w, mu, sigma, z).numpy()
