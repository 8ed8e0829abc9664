"""Recalibration: the PIT map flattens the PIT and its summaries are exact; the mixture recalibration
recovers a known miscalibration and is the PDF every summary describes; zConf."""

import numpy as np
import pytest
import torch

from photoz_spark.model import mdn
from photoz_spark.model.calibration import (
    MixtureCalibration,
    PitCalibration,
    calibrated_mixture,
    crps,
    fit,
    from_dict,
    mean_std,
    mean_std_mode,
    pit,
    quantiles,
    z_conf,
)

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


# --- the mixture recalibration (train.recalibration=mixture) ---

def concentrated_mixtures(n: int, seed: int):
    """Mixtures of 3 components close together, means spread over 0 < m < 3."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, generator=g, dtype=torch.float64) * 3
    w = torch.softmax(torch.randn(n, 3, generator=g, dtype=torch.float64), -1)
    off = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.05
    mu = m[:, None] + off - (w * off).sum(-1, keepdim=True)
    sigma = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.05 + 0.02
    return w, mu, sigma, g


def draw(w, mu, sigma, g) -> torch.Tensor:
    """One redshift per object from its mixture."""
    rows = torch.arange(len(w))
    comp = torch.multinomial(w, 1, generator=g)[:, 0]
    return mu[rows, comp] + sigma[rows, comp] * torch.randn(len(w), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("true_scale", [2.0, 0.5])
def test_mixture_recalibration_recovers_a_known_width_and_shift(true_scale):
    from scipy.stats import kstest

    w, mu, sigma, g = concentrated_mixtures(8000, seed=7)
    # The truth is each predicted PDF widened (over-confident model) or narrowed (under-confident)
    # by true_scale about its mean and shifted by 0.1 m: a model whose PDFs are miscalibrated.
    truth = MixtureCalibration((0.0, 3.0), (true_scale, true_scale), (0.0, 0.3))
    z = draw(*truth.apply(w, mu, sigma), g)
    fit_half, test_half = slice(0, 4000), slice(4000, 8000)
    fitted = MixtureCalibration.fit(w[fit_half], mu[fit_half], sigma[fit_half], z[fit_half], n_nodes=6)
    assert len(fitted.nodes) == 6 and fitted.nodes == tuple(sorted(fitted.nodes))
    np.testing.assert_allclose(fitted.scale, true_scale, rtol=0.06)
    np.testing.assert_allclose(fitted.shift, 0.1 * np.array(fitted.nodes), atol=0.02)
    assert abs(fitted.temperature - 1.0) < 0.15
    held = (w[test_half], mu[test_half], sigma[test_half], z[test_half])
    raw_crps, cal_crps = crps(*held, None).mean(), crps(*held, fitted).mean()
    assert cal_crps < 0.8 * raw_crps
    assert abs(cal_crps - crps(*held, truth).mean()) < 0.01 * raw_crps   # as good as the truth
    assert kstest(pit(*held, None).numpy(), "uniform").statistic > 0.15
    assert kstest(pit(*held, fitted).numpy(), "uniform").statistic < 0.03


def test_calibrated_mixture_is_what_every_summary_describes():
    w, mu, sigma = mixtures(300, seed=5)
    calibration = MixtureCalibration((0.5, 1.5, 2.5), (1.5, 0.8, 2.0), (0.1, -0.05, 0.0), temperature=1.7)
    w2, mu2, sigma2, remaining = calibrated_mixture(w, mu, sigma, calibration)
    assert remaining is None
    torch.testing.assert_close(w2.sum(-1), torch.ones(300, dtype=torch.float64))
    # Mean: the tempered mixture's mean plus the shift interpolated at the raw mean (node 1.5 -> -0.05).
    one = torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[1.4, 1.6]], dtype=torch.float64)
    _, mu_one, sigma_one = calibration.apply(*one, torch.tensor([[0.1, 0.2]], dtype=torch.float64))
    torch.testing.assert_close(mu_one, torch.tensor([[1.5 - 0.05 - 0.08, 1.5 - 0.05 + 0.08]], dtype=torch.float64))
    torch.testing.assert_close(sigma_one, torch.tensor([[0.08, 0.16]], dtype=torch.float64))
    z = mu[:, 0]
    torch.testing.assert_close(crps(w, mu, sigma, z, calibration), mdn.crps(w2, mu2, sigma2, z))
    torch.testing.assert_close(pit(w, mu, sigma, z, calibration), mdn.pit(w2, mu2, sigma2, z))
    torch.testing.assert_close(quantiles(w, mu, sigma, [0.16, 0.84], calibration), mdn.quantiles(w2, mu2, sigma2, [0.16, 0.84]))
    mean, std = mean_std(w, mu, sigma, calibration)
    torch.testing.assert_close(std, mdn.std(w2, mu2, sigma2))
    torch.testing.assert_close(z_conf(w, mu, sigma, mean, calibration), mdn.z_conf(w2, mu2, sigma2, mean))
    identity = MixtureCalibration((1.0,), (1.0,), (0.0,))
    for a, b in zip(identity.apply(w, mu, sigma), (w, mu, sigma), strict=True):
        torch.testing.assert_close(a, b)
    assert from_dict(calibration.to_dict()) == calibration and from_dict(widening().to_dict()) == widening()
    assert from_dict(None) is None


def test_z_conf_is_the_mass_within_five_hundredths_of_one_plus_z():
    from scipy.stats import norm

    mean, sd = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([0.02, 0.3], dtype=torch.float64)
    w, mu, sigma = torch.ones(2, 1, dtype=torch.float64), mean[:, None], sd[:, None]
    expected = 2 * norm.cdf(0.05 * (1 + mean.numpy()) / sd.numpy()) - 1     # 0.9999 and 0.383
    np.testing.assert_allclose(mdn.z_conf(w, mu, sigma, mean).numpy(), expected, rtol=1e-9)
    levels = tuple(np.linspace(0, 1, 11))
    np.testing.assert_allclose(z_conf(w, mu, sigma, mean, PitCalibration(levels, levels)).numpy(), expected, rtol=1e-6)
    assert (z_conf(w, mu, sigma, mean, widening()) < mdn.z_conf(w, mu, sigma, mean)).all()  # wider: less mass


def test_fit_dispatch_and_bad_input():
    w, mu, sigma = mixtures(50)
    z = mu[:, 0]
    assert isinstance(fit("pit_map", w, mu, sigma, z, mdn.pit(w, mu, sigma, z), knots=5), PitCalibration)
    assert isinstance(fit("mixture", w, mu, sigma, z, None, nodes=2), MixtureCalibration)
    with pytest.raises(ValueError, match="mixture or pit_map"):
        fit("isotonic", w, mu, sigma, z, None)
    with pytest.raises(ValueError, match="at least 10"):
        MixtureCalibration.fit(w[:5], mu[:5], sigma[:5], z[:5])
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        MixtureCalibration.fit(w, mu, sigma, z, n_nodes=0)
