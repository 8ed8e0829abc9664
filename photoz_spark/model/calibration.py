"""PDF recalibration fitted on the validation split: a calibrated mixture, or a monotone PIT map.

Two methods (``train.recalibration``), both fitted on held-out objects (the validation split):

``mixture`` (``MixtureCalibration``, the default): the calibrated PDF is again a Gaussian mixture.
Each object's mixture is widened or narrowed about its mean by a factor s and moved by a shift d,
both piecewise linear in the raw PDF mean over ``train.calibration_nodes`` nodes (quantiles of
the fitting sample's raw means, constant beyond the end nodes), and its component weights are sharpened or flattened by one
temperature T (w' ~ w^(1/T)). The 2N + 1 numbers minimise the mean closed-form CRPS of the
calibrated mixtures on the fitting sample (a proper score: it rewards calibration and sharpness
together). Scoring applies it to the network's output, so the ``mixmod_*`` columns, the qp
export and every ``z_phot_*`` summary describe one PDF, and summaries cost what raw ones cost.

``pit_map`` (``PitCalibration``): if a model's PDFs are too narrow or too wide, its PIT values
F_i(z_spec,i) on held-out objects are not uniform. With G the (smoothed) empirical CDF of those
PIT values, the remapped CDF F'(z) = G(F(z)) has uniform PIT on the fitting sample by
construction and keeps each PDF's ranking of redshifts (G is monotone). A quantile of F' at
level q is the quantile of F at level G^-1(q). G is piecewise linear through ``n_knots`` PIT
quantiles, so it is stored as two short lists in ``model.json`` and applied identically
everywhere. Its PDF is not a Gaussian mixture: the ``mixmod`` arrays stay those of the network
and the calibrated PDF is the mixture seen through G, whose mean, std and mode have closed forms
(mean_std_mode) that cost several times a raw summary.

The module's functions (quantiles, mean_std, pit, crps, z_conf) take either calibration, or None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from photoz_spark.model import mdn

MIN_KNOT_GAP = 1e-6
LOG_LIMIT = 3.0   # mixture calibration: width factor and weight temperature within [e^-3, e^3] = [0.05, 20]


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


@dataclass(frozen=True)
class MixtureCalibration:
    """The calibrated PDF as a mixture: width factor and shift per raw-mean node, one weight temperature.

    For an object whose raw mixture has mean m: weights w' = softmax(log w / T), with m' their
    mixture's mean; means m' + d(m) + s(m) (mu - m') and stds s(m) sigma, where s and d are linear
    between ``nodes`` (constant beyond the end nodes). s = 1, d = 0, T = 1 is the identity.
    """

    nodes: tuple[float, ...]     # raw PDF means, increasing
    scale: tuple[float, ...]     # s at each node (> 0)
    shift: tuple[float, ...]     # d at each node
    temperature: float = 1.0     # T

    @classmethod
    def fit(cls, w, mu, sigma, z, n_nodes: int = 8, max_rows: int = 20_000, seed: int = 0) -> MixtureCalibration:
        """Minimise the mean CRPS of the calibrated mixtures of held-out objects (torch LBFGS).

        Args:
            w, mu, sigma: [N, K] raw mixtures of the fitting sample (torch or numpy).
            z: [N] their true redshifts.
            n_nodes: nodes of s and d (quantiles of the raw means at (i + 1/2) / n_nodes; fewer
                where they coincide).
            max_rows: fit on a seeded random subset of at most this many objects (fewer for
                large K, so the K x K CRPS table stays ~25M numbers): a few seconds on a CPU.
            seed: of that subset.

        Returns:
            The calibration.

        Raises:
            ValueError: fewer than 10 objects with finite mixtures and redshifts, or n_nodes < 1.
        """
        if n_nodes < 1:
            raise ValueError(f"calibration nodes must be >= 1, got {n_nodes}")
        w, mu, sigma, z = (torch.as_tensor(a).detach().to("cpu", torch.float64) for a in (w, mu, sigma, z))
        ok = torch.isfinite(z) & torch.isfinite(w).all(-1) & torch.isfinite(mu).all(-1) & torch.isfinite(sigma).all(-1)
        if int(ok.sum()) < 10:
            raise ValueError(f"recalibration needs at least 10 objects with finite PDFs, got {int(ok.sum())}")
        rows = torch.nonzero(ok)[:, 0]
        limit = max(1000, min(max_rows, 25_000_000 // mu.shape[1] ** 2))
        if len(rows) > limit:
            rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:limit]]
        w, mu, sigma, z = w[rows], mu[rows], sigma[rows], z[rows]
        m = mdn.mean(w, mu)
        # Nodes at the centres of n_nodes equal-count bins of the raw means: every node's value is
        # pinned by ~N/n_nodes objects (nodes at the extremes would be pinned by a handful).
        nodes = np.unique(np.quantile(m.numpy(), (np.arange(n_nodes) + 0.5) / n_nodes))
        params = _fit_crps(w, mu, sigma, z, torch.as_tensor(nodes))
        log_scale, shift, log_t = (p.detach().numpy() for p in params)
        return cls(tuple(float(x) for x in nodes), tuple(float(x) for x in np.exp(log_scale)),
                   tuple(float(x) for x in shift), float(np.exp(log_t)))

    @classmethod
    def from_dict(cls, data: dict) -> MixtureCalibration:
        return cls(tuple(data["nodes"]), tuple(data["scale"]), tuple(data["shift"]), float(data["temperature"]))

    def to_dict(self) -> dict:
        return {"method": "mixture", "nodes": list(self.nodes), "scale": list(self.scale),
                "shift": list(self.shift), "temperature": self.temperature}

    def apply(self, w, mu, sigma) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The calibrated mixtures (w', mu', sigma') [N, K] of raw ones (torch, any device and float dtype)."""
        def as_t(values):
            return torch.as_tensor(values, dtype=mu.dtype, device=mu.device)

        return _transform(w, mu, sigma, as_t(self.nodes), torch.log(as_t(self.scale)), as_t(self.shift),
                          torch.log(as_t(self.temperature)))

    def apply_numpy(self, w, mu, sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``apply`` to one object's (or [N, K]) numpy arrays, in float64."""
        args = (torch.as_tensor(np.atleast_2d(np.asarray(a, np.float64))) for a in (w, mu, sigma))
        out = tuple(t.numpy() for t in self.apply(*args))
        return out if np.ndim(w) == 2 else tuple(a[0] for a in out)


def _interp_nodes(x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``values`` at ``nodes`` to x [N], constant beyond the ends (differentiable in values)."""
    if len(nodes) == 1:
        return values[0].expand_as(x)
    i = torch.searchsorted(nodes, x.detach().contiguous()).clamp(1, len(nodes) - 1)
    x0, x1 = nodes[i - 1], nodes[i]
    t = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return values[i - 1] + t * (values[i] - values[i - 1])


def _transform(w, mu, sigma, nodes, log_scale, shift, log_t):
    """MixtureCalibration.apply with its parameters as tensors (so the fit can differentiate it)."""
    m = mdn.mean(w, mu)
    s = torch.exp(_interp_nodes(m, nodes, log_scale))[:, None]
    d = _interp_nodes(m, nodes, shift)[:, None]
    w_t = torch.softmax(torch.log(w.clamp_min(1e-30)) * torch.exp(-log_t), dim=-1)
    m_t = mdn.mean(w_t, mu)[:, None]
    return w_t, m_t + d + s * (mu - m_t), s * sigma


def _bounded(raw: torch.Tensor, limit: float) -> torch.Tensor:
    """raw squashed smoothly into (-limit, limit): keeps the fit's log-scales finite when the data
    push them to a limit (e.g. T -> infinity, equal weights, when the weights carry no information)."""
    return limit * torch.tanh(raw / limit)


def _fit_crps(w, mu, sigma, z, nodes, max_iter: int = 100):
    """(log s at nodes, d at nodes, log T) minimising the mean CRPS, by LBFGS from the identity.

    The CRPS of a mixture is sum_i w_i A(z - mu_i, s_i^2) - 1/2 sum_ij w_i w_j A(mu_i - mu_j,
    s_i^2 + s_j^2) (mdn.crps). Scaling every mean offset and std by s scales A by s, so the K x K
    table A(mu_i - mu_j, ...) is computed once and only the O(N K) term is recomputed per step.
    s stays within [e^-LOG_LIMIT, e^LOG_LIMIT] and T likewise (``_bounded``).
    """
    pair = mdn._crps_a(mu[:, :, None] - mu[:, None, :], sigma[:, :, None] ** 2 + sigma[:, None, :] ** 2)
    raw = [torch.zeros(len(nodes), dtype=mu.dtype, requires_grad=True),   # log s
           torch.zeros(len(nodes), dtype=mu.dtype, requires_grad=True),   # d
           torch.zeros((), dtype=mu.dtype, requires_grad=True)]           # log T
    optimizer = torch.optim.LBFGS(raw, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)
    m = mdn.mean(w, mu)

    def params():
        return _bounded(raw[0], LOG_LIMIT), raw[1], _bounded(raw[2], LOG_LIMIT)

    def loss_fn():
        optimizer.zero_grad()
        log_scale, shift, log_t = params()
        s = torch.exp(_interp_nodes(m, nodes, log_scale))
        w_t, mu_c, sigma_c = _transform(w, mu, sigma, nodes, log_scale, shift, log_t)
        term1 = (w_t * mdn._crps_a(z[:, None] - mu_c, sigma_c ** 2)).sum(-1)
        term2 = s * torch.bmm(torch.bmm(w_t[:, None, :], pair), w_t[:, :, None])[:, 0, 0]
        loss = (term1 - 0.5 * term2).mean()
        loss.backward()
        return loss

    optimizer.step(loss_fn)
    return params()


Calibration = PitCalibration | MixtureCalibration


def from_dict(data: dict | None) -> Calibration | None:
    """The calibration stored in ``model.json`` (by either method's ``to_dict``), or None."""
    if not data:
        return None
    if data.get("method") == "mixture":
        return MixtureCalibration.from_dict(data)
    return PitCalibration.from_dict(data)


def fit(method: str, w, mu, sigma, z, pit_values, knots: int = 50, nodes: int = 8) -> Calibration:
    """Fit ``method`` (mixture | pit_map) on held-out objects: their raw mixtures [N, K], z [N] and raw PIT [N]."""
    if method == "mixture":
        return MixtureCalibration.fit(w, mu, sigma, z, nodes)
    if method == "pit_map":
        return PitCalibration.fit(pit_values, knots)
    raise ValueError(f"recalibration method must be mixture or pit_map, got {method!r}")


def calibrated_mixture(w, mu, sigma, calibration: Calibration | None):
    """(w, mu, sigma, pit_map): the mixture users read and the PIT map still to apply to it.

    A MixtureCalibration is applied here (nothing remains to apply: pit_map None); a
    PitCalibration stays to apply to the raw mixture; no calibration: the raw mixture.
    """
    if isinstance(calibration, MixtureCalibration):
        return (*calibration.apply(w, mu, sigma), None)
    return w, mu, sigma, calibration


def quantiles(w, mu, sigma, qs, calibration: Calibration | None, iterations: int = 60) -> torch.Tensor:
    """Quantiles [N, Q] of the (calibrated, when given) PDF."""
    w, mu, sigma, calibration = calibrated_mixture(w, mu, sigma, calibration)
    levels = qs if calibration is None else calibration.raw_levels(qs)
    return mdn.quantiles(w, mu, sigma, np.clip(levels, 1e-7, 1 - 1e-7), iterations=iterations)


def mean_std_mode(w, mu, sigma, calibration: PitCalibration,
                  iterations: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, standard deviation and mode [N] of the calibrated PDF, in closed form (``_moments``)."""
    mean, std, inner, slopes = _moments(w, mu, sigma, calibration, iterations)
    return mean, std, _calibrated_mode(w, mu, sigma, inner, slopes)


def mean_std(w, mu, sigma, calibration: Calibration | None, iterations: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation [N] of the (calibrated, when given) PDF, without the (costlier) mode."""
    w, mu, sigma, calibration = calibrated_mixture(w, mu, sigma, calibration)
    if calibration is None:
        return mdn.mean(w, mu), mdn.std(w, mu, sigma)
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


def pit(w, mu, sigma, z, calibration: Calibration | None) -> torch.Tensor:
    """PIT values [N] of the (calibrated, when given) PDF at z [N]."""
    w, mu, sigma, calibration = calibrated_mixture(w, mu, sigma, calibration)
    raw = mdn.pit(w, mu, sigma, z)
    return raw if calibration is None else calibration.remap(raw)


def crps(w, mu, sigma, z, calibration: Calibration | None, grid_step: float = 0.002) -> torch.Tensor:
    """CRPS [N] of the (calibrated, when given) PDF at z [N].

    Without calibration or with a MixtureCalibration: the mixture's closed form. With a PIT map:
    integral of (F'(x) - 1[x >= z])^2 on a per-object grid spanning the mixture's +-8 sigma
    bracket and z.
    """
    w, mu, sigma, calibration = calibrated_mixture(w, mu, sigma, calibration)
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


def z_conf(w, mu, sigma, center, calibration: Calibration | None) -> torch.Tensor:
    """zConf [N]: the (calibrated, when given) PDF's mass within center +- mdn.ZCONF_HALF_WIDTH (1 + center)."""
    w, mu, sigma, calibration = calibrated_mixture(w, mu, sigma, calibration)
    if calibration is None:
        return mdn.z_conf(w, mu, sigma, center)
    half = mdn.ZCONF_HALF_WIDTH * (1.0 + center)
    lo, hi = (calibration.remap(mdn.cdf(w, mu, sigma, center + sign * half)) for sign in (-1.0, 1.0))
    return (hi - lo).clamp_min(0.0)
