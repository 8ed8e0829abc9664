"""Per-object summaries of a predicted redshift PDF (torch only: runs on a GPU host without Spark).

The scoring job, the pyfunc model and bench/gpu_check.py all summarise PDFs through ``estimates``.
"""

from __future__ import annotations

import torch

from photoz_spark.model import calibration as cal
from photoz_spark.model import mdn
from photoz_spark.model.calibration import Calibration

# (column, quantile) of the interval bounds and the median, computed in one bisection.
QUANTILES = (("z_phot_l95", 0.025), ("z_phot_l68", 0.16), ("z_phot_median", 0.5),
             ("z_phot_u68", 0.84), ("z_phot_u95", 0.975))
# Bisection steps: the bracket (<~10 wide) halves each step, so 26 steps reach 1.5e-7, float32
# resolution at z ~ 1; mdn.quantile's default 60 only repeats the same float32 value.
QUANTILE_ITERATIONS = 26
# Mode: mean-shift from the 3 component means where the density is highest, 30 steps. On the
# demo model this costs a quarter of the ascent from all 15 means and picks a different peak for
# 0.06 % of objects (near-equal peaks of bimodal PDFs, where either answer is as good).
MODE_ITERATIONS = 30
MODE_STARTS = 3


def estimates(w, mu, sigma, calibration: Calibration | None = None) -> dict[str, torch.Tensor]:
    """Mean, median, mode, std, 68/95 % bounds and zConf [N] per object, of the recalibrated PDF
    when ``calibration`` is given. Keys are the scoring output's column names (z_phot_*, z_conf).

    A MixtureCalibration is applied first (pass ``calibration.calibrated_mixture``'s output to
    also keep the mixture); the summaries of a mixture then cost what raw ones cost. A PIT map
    goes through the closed forms of ``calibration.mean_std_mode`` (several times dearer).
    """
    w, mu, sigma, calibration = cal.calibrated_mixture(w, mu, sigma, calibration)
    qs = cal.quantiles(w, mu, sigma, [q for _, q in QUANTILES], calibration, iterations=QUANTILE_ITERATIONS)
    values = {c: qs[:, i] for i, (c, _) in enumerate(QUANTILES)}
    if calibration is None:
        values.update(z_phot_mean=mdn.mean(w, mu), z_phot_std=mdn.std(w, mu, sigma),
                      z_phot_mode=mdn.mode_meanshift(w, mu, sigma, iterations=MODE_ITERATIONS, starts=MODE_STARTS))
    else:
        mean, std, mode = cal.mean_std_mode(w, mu, sigma, calibration, iterations=QUANTILE_ITERATIONS)
        values.update(z_phot_mean=mean, z_phot_std=std, z_phot_mode=mode)
    values["z_conf"] = cal.z_conf(w, mu, sigma, values["z_phot_mean"], calibration)
    return values
