"""PIT recalibration: the fitted map flattens the PIT, and the calibrated PDF's summaries are exact."""

import numpy as np
import pytest
import torch

from photoz_spark.model import mdn
from photoz_spark.model.calibration import PitCalibration, crps, mean_std_mode, pit, quantiles

pytestmark = pytest.mark.unit


def mixtures(n: int, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64), -1)
    mu = torch.rand(n, k, generator=g, dtype=torch.float64) * 3
    sigma = torch.rand(n, k, generator=g, dtype=torch.float64) * 0.3 + 0.02
    return w, mu, sigma


def widening() -> PitCalibration:
    """The calibration of PDFs that are too narrow: PIT crowds towards 0 and 1."""
    u = np.linspace(0, 1, 2001)
    return PitCalibration.fit(0.5 + 0.5 * np.sign(2 * u - 1) * np.abs(2 * u - 1) ** 0.5)


def test_fit_flattens_an_overconfident_models_pit():
    from scipy.stats import kstest

    rng = np.random.default_rng(1)
    z = rng.normal(1.0, 0.2, 20_000)
    n = len(z)
    w, mu, sigma = (torch.ones(n, 1, dtype=torch.float64), torch.full((n, 1), 1.0, dtype=torch.float64),
                    torch.full((n, 1), 0.1, dtype=torch.float64))  # predicted width 0.1, truth 0.2
    fit_half, test_half = slice(0, n // 2), slice(n // 2, n)
    raw = pit(w, mu, sigma, torch.from_numpy(z), None).numpy()
    calibration = PitCalibration.fit(raw[fit_half])
    after = pit(w[test_half], mu[test_half], sigma[test_half], torch.from_numpy(z[test_half]), calibration).numpy()
    assert kstest(raw[test_half], "uniform").statistic > 0.15
    assert kstest(after, "uniform").statistic < 0.025
    _, std, _ = mean_std_mode(w[:3], mu[:3], sigma[:3], calibration)
    np.testing.assert_allclose(std.numpy(), 0.2, rtol=0.05)  # the calibrated PDF has the true width
    before_crps = crps(w, mu, sigma, torch.from_numpy(z), None)[test_half].mean()
    after_crps = crps(w[test_half], mu[test_half], sigma[test_half], torch.from_numpy(z[test_half]), calibration).mean()
    assert after_crps < before_crps


def test_identity_map_reproduces_the_mixture():
    w, mu, sigma = mixtures(200)
    levels = tuple(np.linspace(0, 1, 11))
    identity = PitCalibration(levels, levels)
    mean, std, mode = mean_std_mode(w, mu, sigma, identity)
    torch.testing.assert_close(mean, mdn.mean(w, mu))
    torch.testing.assert_close(std, mdn.std(w, mu, sigma))
    torch.testing.assert_close(mode, mdn.mode_meanshift(w, mu, sigma), atol=1e-6, rtol=0)
    z = mu[:, 0] + 0.1
    torch.testing.assert_close(crps(w, mu, sigma, z, identity), mdn.crps(w, mu, sigma, z), atol=2e-5, rtol=0)


def test_closed_forms_match_a_fine_grid():
    w, mu, sigma = mixtures(40, seed=3)
    calibration = widening()
    grid = torch.linspace(-3, 7, 100_001, dtype=torch.float64)
    cdf = calibration.remap(mdn.cdf_grid(w, mu, sigma, grid))
    density = torch.diff(cdf, dim=1) / torch.diff(grid)
    x, dx = 0.5 * (grid[1:] + grid[:-1]), grid[1] - grid[0]
    mean_grid = (density * x).sum(1) * dx
    std_grid = ((density * (x - mean_grid[:, None]) ** 2).sum(1) * dx).sqrt()
    mean, std, mode = mean_std_mode(w, mu, sigma, calibration)
    torch.testing.assert_close(mean, mean_grid, atol=1e-6, rtol=0)
    torch.testing.assert_close(std, std_grid, atol=1e-6, rtol=0)
    torch.testing.assert_close(mode, x[density.argmax(1)], atol=5e-4, rtol=0)
    q = quantiles(w, mu, sigma, [0.16, 0.5, 0.84], calibration)
    at_q = calibration.remap(mdn.cdf_grid(w, mu, sigma, grid))
    for j, level in enumerate((0.16, 0.5, 0.84)):
        expected = grid[(at_q < level).sum(1)]
        torch.testing.assert_close(q[:, j], expected, atol=2e-4, rtol=0)


def test_round_trip_and_bad_input():
    calibration = widening()
    assert PitCalibration.from_dict(calibration.to_dict()) == calibration
    assert PitCalibration.from_dict(None) is None
    with pytest.raises(ValueError, match="at least 10"):
        PitCalibration.fit([0.5, np.nan])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PitCalibration.fit(np.linspace(0, 2, 50))
