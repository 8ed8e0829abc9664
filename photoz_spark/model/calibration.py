"""PDF recalibration from the validation PIT: one monotone remapping g of every predicted CDF.

If a model's PDFs are too narrow or too wide, its PIT values F_i(z_spec,i) on held-out objects
are not uniform. With G the (smoothed) empirical CDF of those PIT values, the remapped CDF
F'(z) = G(F(z)) has uniform PIT on the fitting sample by construction, keeps each PDF's
ranking of redshifts (G is monotone), and costs nothing to apply: a quantile of F' at level q
is the quantile of F at level G^-1(q). G is piecewise linear through ``n_knots`` PIT quantiles,
so it is stored as two short lists in ``model.json`` and applied identically everywhere.

The mixture parameters (the qp ``mixmod`` arrays) stay those of the network; the calibrated
PDF is the mixture seen through G, whose mean, std and mode have closed forms (mean_std_mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from photoz_spark.model import mdn

MIN_KNOT_GAP = 1e-6


@dataclass(frozen=True)
class PitCalibration:
    """G as knots: G(pit_knots[j]) = levels[j], linear in between, G(0) = 0, G(1) = 1."""

    pit_knots: tuple[float, ...]
    levels: tuple[float, ...]

    @classmethod
    def fit(cls, pit_values, n_knots: int = 50) -> PitCalibration:
        """Fit G to PIT values of held-out objects (the validation split).

        Args:
            pit_values: PIT values in [0, 1]; NaN entries are ignored.
            n_knots: interior knots (PIT quantiles at evenly spaced levels).

        Returns:
            The calibration.

        Raises:
            ValueError: with fewer than 10 finite PIT values, or values outside [0, 1].
        """
        pit = np.asarray(pit_values, float)
        pit = pit[np.isfinite(pit)]
        if len(pit) < 10:
            raise ValueError(f"recalibration needs at least 10 PIT values, got {len(pit)}")
        if pit.min() < -1e-6 or pit.max() > 1 + 1e-6:
            raise ValueError("PIT values must lie in [0, 1]")
        levels = np.linspace(0.0, 1.0, n_knots + 2)
        knots = np.quantile(np.clip(pit, 0.0, 1.0), levels)
        knots[0], knots[-1] = 0.0, 1.0
        # Knots at least MIN_KNOT_GAP apart keep G invertible and its slope bounded where PIT
        # values pile up (objects far outside their PDF): such mass goes to the PDF's tail, not
        # to a spike at its +-8 sigma bracket.
        j = np.arange(len(knots)) * MIN_KNOT_GAP
        knots = j + np.maximum.accumulate(knots - j)        # each knot >= the previous + gap ...
        knots = np.minimum(knots, 1.0 - j[::-1])             # ... with room for the gaps above
        return cls(tuple(float(k) for k in knots), tuple(float(v) for v in levels))

    @classmethod
    def from_dict(cls, data: dict | None) -> PitCalibration | None:
        if not data:
            return None
        return cls(tuple(data["pit_knots"]), tuple(data["levels"]))

    def to_dict(self) -> dict:
        return {"method": "pit_quantile_map", "pit_knots": list(self.pit_knots), "levels": list(self.levels)}

    def remap(self, cdf_values):
        """G(u): calibrated CDF values from raw ones (numpy or torch, any shape)."""
        if isinstance(cdf_values, torch.Tensor):
            return _interp_torch(cdf_values, self.pit_knots, self.levels)
        return np.interp(cdf_values, self.pit_knots, self.levels)

    def raw_levels(self, q):
        """G^-1(q): the raw CDF levels whose quantiles are the calibrated q-quantiles."""
        return np.interp(np.asarray(q, float), self.levels, self.pit_knots)


def _interp_torch(x: torch.Tensor, xp, fp) -> torch.Tensor:
    xp_t = torch.as_tensor(xp, dtype=x.dtype, device=x.device)
    fp_t = torch.as_tensor(fp, dtype=x.dtype, device=x.device)
    x = x.clamp(0.0, 1.0)
    i = torch.searchsorted(xp_t, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp_t[i - 1], xp_t[i], fp_t[i - 1], fp_t[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0).clamp_min(1e-12)


def quantiles(w, mu, sigma, qs, calibration: PitCalibration | None, iterations: int = 60) -> torch.Tensor:
    """Quantiles [N, Q] of the (calibrated, when given) PDF."""
    levels = qs if calibration is None else calibration.raw_levels(qs)
    return mdn.quantiles(w, mu, sigma, np.clip(levels, 1e-7, 1 - 1e-7), iterations=iterations)


def mean_std_mode(w, mu, sigma, calibration: PitCalibration,
                  iterations: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, standard deviation and mode [N] of the calibrated PDF, in closed form (``_moments``)."""
    mean, std, inner, slopes = _moments(w, mu, sigma, calibration, iterations)
    return mean, std, _calibrated_mode(w, mu, sigma, inner, slopes)


def mean_std(w, mu, sigma, calibration: PitCalibration, iterations: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation [N] of the calibrated PDF, without the (costlier) mode."""
    return _moments(w, mu, sigma, calibration, iterations)[:2]


def _moments(w, mu, sigma, calibration: PitCalibration, iterations: int):
    """Mean and std [N] of the calibrated PDF, with the raw quantiles at the inner knots [N, J]
    and the slopes of G [J + 1] that the mode needs.

    G is linear between knots, so the calibrated density is the mixture density times the slope
    s_j of G on segment j, i.e. between the raw quantiles Q(k_j) and Q(k_j+1). Mean and second
    moment are then sums of the mixture's partial moments over those segments (Gaussian partial
    moments are exact), and the mode is the highest of s_j f(x) over the mixture's own local
    maxima and the segment ends (where a step in s_j can put the maximum).
    """
    knots = torch.as_tensor(calibration.pit_knots, dtype=mu.dtype, device=mu.device)
    slopes = torch.diff(torch.as_tensor(calibration.levels, dtype=mu.dtype, device=mu.device)) / torch.diff(knots)
    inner = mdn.quantiles(w, mu, sigma, knots[1:-1].clamp(1e-7, 1 - 1e-7), iterations=iterations)  # [N, J]
    inf = torch.full_like(inner[:, :1], float("inf"))
    ends = torch.cat([-inf, inner, inf], dim=1)                                    # [N, J + 2]
    t = (ends[:, :, None] - mu[:, None, :]) / sigma[:, None, :]                    # [N, J + 2, K]
    cdf, pdf = mdn.normal_cdf(t), torch.nan_to_num(mdn.normal_pdf(t))
    t_pdf = torch.nan_to_num(t * mdn.normal_pdf(t))                                # t phi(t) -> 0 at +-inf
    d0 = torch.diff(cdf, dim=1)                                                    # per segment [N, J + 1, K]
    d1 = -torch.diff(pdf, dim=1)                                                   # int t phi
    d2 = d0 - torch.diff(t_pdf, dim=1)                                             # int t^2 phi
    m, s = mu[:, None, :], sigma[:, None, :]
    moment1 = (w[:, None, :] * (m * d0 + s * d1)).sum(-1)                          # [N, J + 1]
    moment2 = (w[:, None, :] * (m * m * d0 + 2 * m * s * d1 + s * s * d2)).sum(-1)
    mean = (slopes * moment1).sum(-1)
    std = ((slopes * moment2).sum(-1) - mean ** 2).clamp_min(0.0).sqrt()
    return mean, std, inner, slopes


def _calibrated_mode(w, mu, sigma, inner: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    peaks = mdn.mode_candidates(w, mu, sigma)                                      # [N, K]
    segment = torch.searchsorted(inner.contiguous(), peaks.contiguous())           # [N, K] in 0..J
    peak_density = mdn.pdf_at(w, mu, sigma, peaks) * slopes[segment]
    edge_density = mdn.pdf_at(w, mu, sigma, inner) * torch.maximum(slopes[:-1], slopes[1:])
    x = torch.cat([peaks, inner], dim=1)
    density = torch.cat([peak_density, edge_density], dim=1)
    return x.gather(1, density.argmax(-1, keepdim=True))[:, 0]


def pit(w, mu, sigma, z, calibration: PitCalibration | None) -> torch.Tensor:
    """PIT values [N] of the (calibrated, when given) PDF at z [N]."""
    raw = mdn.pit(w, mu, sigma, z)
    return raw if calibration is None else calibration.remap(raw)


def crps(w, mu, sigma, z, calibration: PitCalibration | None, grid_step: float = 0.002) -> torch.Tensor:
    """CRPS [N] of the (calibrated, when given) PDF at z [N].

    Without calibration: the mixture's closed form. With it: integral of (F'(x) - 1[x >= z])^2
    on a per-object grid spanning the mixture's +-8 sigma bracket and z.
    """
    if calibration is None:
        return mdn.crps(w, mu, sigma, z)
    out = torch.empty_like(z)
    for start in range(0, len(z), 256):  # bounded memory: 256 x grid x K at most
        sl = slice(start, start + 256)
        out[sl] = _crps_on_grid(w[sl], mu[sl], sigma[sl], z[sl], calibration, grid_step)
    return out


def _crps_on_grid(w, mu, sigma, z, calibration: PitCalibration, grid_step: float) -> torch.Tensor:
    # Two grids meeting at z, so the step of 1[x >= z] falls on a grid point, not inside a cell.
    lo = torch.minimum((mu - 8.0 * sigma).min(-1).values, z)
    hi = torch.maximum((mu + 8.0 * sigma).max(-1).values, z)
    n_grid = int(min(4096, max(256, float((hi - lo).max()) / grid_step)))
    t = torch.linspace(0.0, 1.0, n_grid, dtype=mu.dtype, device=mu.device)[None, :]
    total = torch.zeros_like(z)
    for start, stop, above in ((lo, z, 0.0), (z, hi, 1.0)):
        x = start[:, None] + (stop - start)[:, None] * t                              # [N, G]
        raw = (w[:, None, :] * mdn.normal_cdf((x[:, :, None] - mu[:, None, :]) / sigma[:, None, :])).sum(-1)
        total += torch.trapezoid((calibration.remap(raw) - above) ** 2, x, dim=-1)
    return total
