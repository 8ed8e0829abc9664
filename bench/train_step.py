"""One training step on CPU: this project's network against the same network on PyTorch's stock
dropout and the transposed batch-norm layout, side by side in one process.

    .venv/bin/python bench/train_step.py [--bands 14] [--batch 128] [--reps 6] [--autocast bf16]

Both models start from the same weights and take Adam steps on the same random batch; the
timings alternate between them (``--reps`` rounds of ``--steps`` steps each), so the machine's
load drifts over both alike. Prints samples per CPU second of one torch thread for each round,
the medians and their ratio. ``_Dropout`` (``torch.rand`` mask) and ``_SeqBatchNorm``'s training
layout ([B*T, F]) are the two differences; bench/RESULTS.md has the numbers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from photoz_spark.model import BiLSTMMDN, ModelConfig
from photoz_spark.model.mdn import nll


class _TransposedBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the feature axis of [B, T, F] through the transposed view (the old layout)."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def stock_copy(net: BiLSTMMDN) -> BiLSTMMDN:
    """The same weights with nn.Dropout and the transposed batch norm."""
    stock = copy.deepcopy(net)
    stock.drop = nn.Dropout(net.config.dropout)
    for name in ("norm1", "norm2"):
        norm = getattr(net, name)
        replacement = _TransposedBatchNorm(norm.num_features)
        replacement.load_state_dict(norm.state_dict())
        setattr(stock, name, replacement)
    return stock


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", type=int, default=14, help="sequence length T (14 = all14, 6 = ugrizy)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--reps", type=int, default=6, help="timed rounds per model")
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = BiLSTMMDN(ModelConfig(n_steps=args.bands, aggregate="final")).train()
    models = {"stock layers": stock_copy(net), "photoz_spark": net}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    features = torch.randn(args.batch, 2 * args.bands)
    observed = torch.ones(args.batch, args.bands, dtype=torch.bool)
    z = 3.0 * torch.rand(args.batch)

    def step(name):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            out = models[name](features, observed)
        loss = nll(*[t.float() for t in out], z).mean()
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    rates = {name: [] for name in models}
    for _ in range(args.reps):
        for name in models:
            for _ in range(3):  # warm-up: oneDNN primitive caches, allocator
                step(name)
            start = time.process_time()
            for _ in range(args.steps):
                step(name)
            rates[name].append(args.steps * args.batch / (time.process_time() - start))
    print(f"T={args.bands} bands, batch {args.batch}, {args.autocast}: samples per CPU s, one thread")
    for name, values in rates.items():
        print(f"  {name:>13}: median {statistics.median(values):7.0f}   rounds {[round(v) for v in values]}")
    ratio = statistics.median(rates["photoz_spark"]) / statistics.median(rates["stock layers"])
    print(f"  ratio photoz_spark / stock layers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
