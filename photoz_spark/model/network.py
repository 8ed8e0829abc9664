"""The LSTM-MDNz network: Bi-LSTM encoder over the band sequence and a Gaussian-mixture head.

BiLSTM(128/dir) -> dropout 0.3 -> batch-norm -> BiLSTM(64/dir) -> dropout 0.3 -> batch-norm ->
aggregation over the sequence -> dense (ReLU) -> MDN with K = 15 Gaussians (softmax weights,
free means, softplus sigmas). Each step's input is the two standardised channels of
``features.stats.standardise`` (flux and flux_err, or asinh magnitude and its error), plus the
band's observed flag, so a missing band is seen as missing rather than as an average flux.

``aggregate`` turns the second Bi-LSTM's per-step outputs [B, T, 2*hidden2] into one vector:

* ``flatten``: the per-step outputs concatenated band by band [B, T*2*hidden2] (the paper's
  "final hidden states ... aggregated into a unified feature vector"): the dense layer knows
  which band said what;
* ``final``: the last state of each direction (forward at the last band, backward at the
  first) [B, 2*hidden2];
* ``mean``: the average over bands [B, 2*hidden2] (this project's first version).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SIGMA_FLOOR = 1e-4
AGGREGATES = ("flatten", "final", "mean")


@dataclass(frozen=True)
class ModelConfig:
    n_steps: int              # T: bands in the sequence
    n_channels: int = 2       # C: (flux, flux_err) per band
    use_mask: bool = True     # append the observed flag as an input channel
    hidden1: int = 128        # per direction
    hidden2: int = 64         # per direction
    dropout: float = 0.3
    dense: int = 128
    n_components: int = 15
    aggregate: str = "mean"   # flatten | final | mean (see the module docstring)

    def __post_init__(self):
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"model.aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class _SeqBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the feature axis of a [B, T, F] sequence."""

    def forward(self, x):
        if self.training or self.running_var is None or self.weight is None:
            # [B*T, F] holds the same per-feature statistics as [B, F, T] (and the same count for
            # the running variance's correction), in the contiguous layout: forward + backward on
            # the transposed view took 7.6 ms against 1.1 ms at [128, 14, 256] on one CPU thread.
            return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)
        # Inference: the same per-feature affine map, on the last (contiguous) axis. batch_norm on
        # the transposed view took 9 % of CPU scoring time; this takes about 1 %.
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return x * scale + (self.bias - self.running_mean * scale)


class _Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from ``torch.rand`` instead of ``bernoulli_``.

    Same distribution (each element kept with probability 1 - p, scaled by 1 / (1 - p)) in under half
    the CPU time (3.0 against 6.7 ms at [128, 14, 256]): the bernoulli_ kernel took 9 % of a training
    step. Other devices keep PyTorch's fused kernel.
    """

    def forward(self, x):
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # fp32 draws even under bf16 autocast
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


class BiLSTMMDN(nn.Module):
    """Maps standardised features [B, T*C] and the observed mask [B, T] to mixture parameters."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        n_in = c.n_channels + (1 if c.use_mask else 0)
        self.lstm1 = nn.LSTM(n_in, c.hidden1, batch_first=True, bidirectional=True)
        self.norm1 = _SeqBatchNorm(2 * c.hidden1)
        self.lstm2 = nn.LSTM(2 * c.hidden1, c.hidden2, batch_first=True, bidirectional=True)
        self.norm2 = _SeqBatchNorm(2 * c.hidden2)
        self.drop = _Dropout(c.dropout)
        width = 2 * c.hidden2 * (c.n_steps if c.aggregate == "flatten" else 1)
        self.dense = nn.Linear(width, c.dense)
        self.head = nn.Linear(c.dense, 3 * c.n_components)

    def forward(self, features: torch.Tensor, observed: torch.Tensor):
        """Returns (logits, mu, sigma), each [B, K]."""
        c = self.config
        x = features.view(features.shape[0], c.n_steps, c.n_channels)
        if c.use_mask:
            x = torch.cat([x, observed.to(x.dtype)[..., None]], dim=-1)
        x = self.norm1(self.drop(self.lstm1(x)[0]))
        x = self.norm2(self.drop(self.lstm2(x)[0]))
        x = F.relu(self.dense(self.aggregate(x)))
        # The mixture head in fp32 even under autocast: half-precision means/sigmas move z_mean by
        # ~1e-3, and the loss (mdn.nll) is computed from them in fp32.
        with torch.autocast(x.device.type, enabled=False):
            logits, mu, raw_sigma = self.head(x.float()).chunk(3, dim=-1)
        return logits, mu, F.softplus(raw_sigma) + SIGMA_FLOOR


    def init_head(self, z: torch.Tensor | np.ndarray, scale: float = 0.1) -> None:
        """Start the mixture at the training redshift distribution (``train.head_init=quantiles``).

        PyTorch's default initialisation puts every component's mean near 0, two units below a
        typical quasar, and Adam at 1e-3 moves a bias ~1e-3 per step: the first ~10 epochs are
        spent getting the means into place (bench/RESULTS.md, "A recipe that converges fast"). Here the
        K means start at the K quantiles of the training redshifts, the widths at their mean
        spacing, the weights equal, and the head's weights are scaled by ``scale`` so that the
        first steps move the mixture gently from there.

        Args:
            z: training redshifts (this rank's shard or a sample of it).
            scale: factor on the head's initial weights.
        """
        k = self.config.n_components
        z = np.asarray(z, dtype=np.float64)
        z = z[np.isfinite(z)]
        if len(z) == 0:
            raise ValueError("init_head needs at least one finite training redshift")
        means = np.quantile(z, (np.arange(k) + 0.5) / k)
        width = max(float(means[-1] - means[0]) / k, 0.01)
        with torch.no_grad():
            self.head.weight.mul_(scale)
            bias = self.head.bias  # [logits | mu | raw sigma], as ``forward`` chunks it
            bias[:k] = 0.0
            bias[k:2 * k] = torch.as_tensor(means, dtype=bias.dtype)
            bias[2 * k:] = math.log(math.expm1(width))  # softplus^-1: sigma starts at ``width``

    def aggregate(self, steps: torch.Tensor) -> torch.Tensor:
        """The second Bi-LSTM's per-step outputs [B, T, 2*hidden2] -> one vector per object."""
        how = self.config.aggregate
        if how == "flatten":
            return steps.reshape(steps.shape[0], -1)
        if how == "final":  # forward direction ends at the last band, backward at the first
            h = self.config.hidden2
            return torch.cat([steps[:, -1, :h], steps[:, 0, h:]], dim=-1)
        return steps.mean(dim=1)


def forward_chunks(network: nn.Module, features: torch.Tensor, observed: torch.Tensor, rows: int):
    """The network's (logits, mu, sigma) for every row, computed ``rows`` at a time (on CPU,
    ``registry.artifact.cpu_chunk_rows`` keeps each call's activations small); one call even
    for 0 rows, so the outputs keep their [0, K] shapes."""
    outputs = [network(features[start:start + rows], observed[start:start + rows])
               for start in range(0, max(len(features), 1), rows)]
    return tuple(torch.cat([out[i] for out in outputs]) for i in range(3))


def mixture(logits, mu, sigma):
    """(weights, mu, sigma) from the network's output."""
    return torch.softmax(logits, dim=-1), mu, sigma
