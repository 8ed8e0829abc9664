"""photoz_spark.metrics against values computed by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from photoz_spark import metrics
from photoz_spark.model import scores

pytestmark = pytest.mark.unit

# z_spec = 1 everywhere, so dz / (1 + z_spec) = dz / 2 = [0.1, -0.05, 0, 0.75].
Z_SPEC = [1.0, 1.0, 1.0, 1.0]
Z_PHOT = [1.2, 0.9, 1.0, 2.5]


def test_point_metrics_by_hand():
    assert metrics.sigma_nmad(Z_PHOT, Z_SPEC) == pytest.approx(1.48 * 0.075)   # median |.| of 0, .05, .1, .75
    assert metrics.outlier_rate(Z_PHOT, Z_SPEC) == pytest.approx(0.25)         # only 0.75 > 0.15
    assert metrics.bias(Z_PHOT, Z_SPEC) == pytest.approx(0.05)                 # median of -.05, 0, .1, .75
    assert metrics.mse(Z_PHOT, Z_SPEC) == pytest.approx((0.04 + 0.01 + 0 + 2.25) / 4)
    assert metrics.mae(Z_PHOT, Z_SPEC) == pytest.approx((0.2 + 0.1 + 0 + 1.5) / 4)
    assert metrics.catastrophic_rate(Z_PHOT, Z_SPEC) == pytest.approx(0.25)    # |dz| = 1.5 > 1
    m = metrics.point_metrics(Z_PHOT, Z_SPEC, crps=[0.1, 0.2, 0.3, 0.6])
    assert m == pytest.approx({"n": 4, "sigma_nmad": 0.111, "f_out": 0.25, "bias": 0.05, "mse": 0.575,
                               "mae": 0.45, "crps": 0.3})


def test_normalisation_uses_one_plus_z_spec():
    # dz = 0.3 at z_spec = 2: 0.1 normalised, not an outlier; 0.5 at z_spec = 2 is (0.1667 > 0.15).
    assert metrics.outlier_rate([2.3, 2.5], [2.0, 2.0]) == pytest.approx(0.5)
    assert metrics.sigma_nmad([2.3], [2.0]) == pytest.approx(0.148)


def test_empty_sample_refused():
    with pytest.raises(ValueError, match="no objects"):
        metrics.point_metrics([], [])


def test_crps_of_one_gaussian_closed_form():
    # CRPS(N(mu, s), y) = s [t (2 Phi(t) - 1) + 2 phi(t) - 1/sqrt(pi)], t = (y - mu)/s.
    one = {"w": [[1.0]], "mu": [[1.0]], "sigma": [[0.1]]}
    at_mean = scores.mixture_crps(**one, z_spec=[1.0])
    assert at_mean[0] == pytest.approx(0.1 * (math.sqrt(2 / math.pi) - 1 / math.sqrt(math.pi)), rel=1e-9)
    one_sigma_off = scores.mixture_crps(**one, z_spec=[1.1])
    assert one_sigma_off[0] == pytest.approx(0.1 * (0.6826894921 + 0.4839414490 - 0.5641895835), rel=1e-8)


def test_crps_of_a_mixture_equals_the_integral_definition():
    w, mu, sigma, y = np.array([[0.3, 0.7]]), np.array([[1.0, 2.0]]), np.array([[0.2, 0.4]]), 1.6
    integral = 0.0
    for lo, hi, above in ((-3.0, y, 0.0), (y, 7.0, 1.0)):  # split at y: the step is not inside a cell
        x = np.linspace(lo, hi, 100_001)
        cdf = (w * stats.norm.cdf((x[:, None] - mu) / sigma)).sum(-1)
        integral += np.trapezoid((cdf - above) ** 2, x)
    assert scores.mixture_crps(w, mu, sigma, [y])[0] == pytest.approx(integral, rel=1e-5)


def test_pit_is_the_cdf_at_z_spec():
    pit = scores.mixture_pit([[1.0], [1.0]], [[1.0], [1.0]], [[0.5], [0.5]], [1.0, 1.5])
    assert pit == pytest.approx([0.5, 0.8413447461])


def test_pit_statistics_by_hand():
    pit = [0.8, 0.1, 0.4]
    # KS: sorted .1 .4 .8 -> max(1/3-.1, 2/3-.4, 1-.8, .1-0, .4-1/3, .8-2/3) = 2/3 - 0.4
    # CvM: 1/36 + (1/6-.1)^2 + (3/6-.4)^2 + (5/6-.8)^2
    s = metrics.pit_statistics(pit)
    assert s["pit_ks"] == pytest.approx(2 / 3 - 0.4)
    assert s["pit_cvm"] == pytest.approx(1 / 36 + (1 / 6 - 0.1) ** 2 + 0.01 + (5 / 6 - 0.8) ** 2)
    assert 0 < s["pit_ks_p"] <= 1 and 0 < s["pit_cvm_p"] <= 1
    uniform = metrics.pit_statistics(np.random.default_rng(0).uniform(size=5000))
    assert uniform["pit_ks"] < 0.03 and uniform["pit_ks_p"] > 0.01


def test_all_metrics_adds_crps_and_pit_summaries():
    m = metrics.all_metrics(Z_PHOT, Z_SPEC, crps=[0.1, 0.2, 0.3, 0.6], pit=[0.1, 0.4, 0.8, 0.5])
    assert m["f_cat"] == pytest.approx(0.25)
    assert m["crps"] == m["crps_mean"] == pytest.approx(0.3) and m["crps_median"] == pytest.approx(0.25)
    assert {"pit_ks", "pit_ks_p", "pit_cvm", "pit_cvm_p"} <= set(m)


def test_metrics_by_z_bin():
    z_spec = [0.5, 1.5, 1.6, 3.0, 6.0]
    z_phot = [0.5, 1.5, 2.5, 3.0, 1.0]
    rows = metrics.metrics_by_z_bin(z_phot, z_spec, [0, 1, 2, 2.5, 3], crps=[0.1, 0.2, 0.4, 0.3, 9.0])
    assert [(r["z_lo"], r["z_hi"], r["n"]) for r in rows] == [(0, 1, 1), (1, 2, 2), (2, 2.5, 0), (2.5, 3, 1)]
    assert rows[0]["sigma_nmad"] == 0 and rows[0]["crps"] == pytest.approx(0.1)
    # bin 1-2: normalised |dz| = 0 and 0.9 / 2.6
    assert rows[1]["sigma_nmad"] == pytest.approx(1.48 * 0.9 / 2.6 / 2)
    assert rows[1]["f_out"] == pytest.approx(0.5) and rows[1]["crps"] == pytest.approx(0.3)
    assert set(rows[2]) == {"z_lo", "z_hi", "n"}   # empty bin: no metrics
    assert rows[3]["n"] == 1                      # z_spec on the last edge is in the last bin; 6.0 in none


def test_bad_bins_refused():
    with pytest.raises(ValueError, match="increasing"):
        metrics.metrics_by_z_bin([1.0], [1.0], [0, 2, 1])


def test_completeness_curve_keeps_the_highest_z_conf_first():
    from photoz_spark.metrics import completeness_curve

    z_spec = np.zeros(10)
    z_phot = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.3, 0.3, 0.3, 0.3, 0.3])   # last five: outliers
    z_conf = np.array([0.9, 0.8, 0.85, 0.7, 0.75, 0.1, 0.2, 0.3, 0.6, 0.65])
    rows = completeness_curve(z_phot, z_spec, z_conf, (1.0, 0.7, 0.5, 0.25))
    assert [r["n"] for r in rows] == [10, 7, 5, 3]
    assert [r["f_out"] for r in rows] == pytest.approx([0.5, 2 / 7, 0.0, 0.0])
    assert [r["z_conf_min"] for r in rows] == pytest.approx([0.1, 0.6, 0.7, 0.8])
    assert rows[2]["sigma_nmad"] == pytest.approx(1.48 * 0.02)        # median |dz| of 0, .01, .02, .03, .04
    with pytest.raises(ValueError, match="kept fractions"):
        completeness_curve(z_phot, z_spec, z_conf, (0.0,))
