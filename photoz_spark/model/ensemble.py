"""Deep ensembles: M independently trained LSTM-MDNz networks read as ONE Gaussian mixture.

A deep ensemble's predictive PDF is the equal-weight average of its members' PDFs
(Lakshminarayanan et al. 2017). The average of M mixtures of K Gaussians is itself a mixture
of K*M Gaussians: member m's weights divided by M, its means and sigmas unchanged.
``EnsembleMDN`` returns that mixture in the network's own output form (logits, mu, sigma),
so everything downstream -- ``mdn`` maths, summaries, calibration, scoring's ``mixmod_*``
columns, the qp export -- takes an ensemble as one model with K*M components.

Its state dict holds every member's weights (``members.<m>.<tensor>``), so a registered
ensemble is one ``weights.pt``; ``model.json`` says ``"ensemble": M`` (``build_network``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from photoz_spark.model.network import BiLSTMMDN, ModelConfig


class EnsembleMDN(nn.Module):
    """M member networks of one ModelConfig whose outputs form one mixture of K*M components.

    Attributes:
        members: the member networks (an ``nn.ModuleList``).
        member_config: each member's ModelConfig (K components).
        config: the ensemble's output seen as one network: the members' config with
            ``n_components = K*M`` (what scoring sizes its mixture columns with).
    """

    def __init__(self, config: ModelConfig, n_members: int):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {n_members}")
        self.member_config = config
        self.members = nn.ModuleList(BiLSTMMDN(config) for _ in range(n_members))
        self.config = replace(config, n_components=config.n_components * n_members)

    @classmethod
    def from_members(cls, networks: Sequence[BiLSTMMDN]) -> EnsembleMDN:
        """The ensemble of trained networks (which must share one ModelConfig); weights are copied."""
        configs = {net.config for net in networks}
        if len(configs) != 1:
            raise ValueError("ensemble members must share one model configuration")
        ensemble = cls(networks[0].config, len(networks))
        for member, net in zip(ensemble.members, networks, strict=True):
            member.load_state_dict(net.state_dict())
        return ensemble

    def forward(self, features: torch.Tensor, observed: torch.Tensor):
        """Returns (logits, mu, sigma), each [B, K*M]: member m's components at [m*K, (m+1)*K).

        The logits are log(w_mk / M), so ``softmax`` over all K*M gives each member's own
        weights divided by M: the equal-weight average of the members' mixtures.
        """
        outputs = [member(features, observed) for member in self.members]
        log_m = math.log(len(outputs))
        logits = torch.cat([F.log_softmax(out[0], dim=-1) - log_m for out in outputs], dim=-1)
        mu = torch.cat([out[1] for out in outputs], dim=-1)
        sigma = torch.cat([out[2] for out in outputs], dim=-1)
        return logits, mu, sigma


def build_network(config: ModelConfig, n_members: int = 1) -> nn.Module:
    """The network a model.json describes: one BiLSTMMDN (``ensemble`` absent or 1, every model
    saved before ensembles existed) or an EnsembleMDN of ``n_members``."""
    if n_members == 1:
        return BiLSTMMDN(config)
    return EnsembleMDN(config, n_members)
