"""Stream one split of a labelled features catalog through a model, keeping per-object results.

Why the driver and not Spark: evaluation reads one features catalog (a few hundred thousand
rows at the paper's scale, 15 % of them in the test split) column-pruned from Parquet and runs
one forward pass per row; Arrow batches through torch on the driver do that in seconds to
minutes, and what it keeps is a handful of floats per object (for the metrics, medians and
figures), never the whole catalog or all mixtures. Scoring a survey-size catalog is the
scoring job's business (Spark ``mapInArrow``), not this one's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from photoz_spark.features.catalog import FeaturesCatalog
from photoz_spark.model.calibration import Calibration
from photoz_spark.model.scores import CALIBRATED_SCORES, concat_scores, object_scores


@dataclass
class Example:
    """One object's mixture, kept for the example-PDF figure."""

    z_spec: float
    z_phot: float
    w: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


@dataclass
class SplitResult:
    """Per-object results of one split: the network's PDFs and, with a calibration, the recalibrated ones."""

    split: str
    z_spec: np.ndarray
    z_phot: np.ndarray            # mixture mean: the paper's point estimate
    crps: np.ndarray              # closed form (mdn.crps)
    pit: np.ndarray
    calibrated: dict = field(default_factory=dict)   # z_phot, crps, pit, z_conf of the recalibrated PDFs
    examples: list[Example] = field(default_factory=list)
    z_conf: np.ndarray | None = None                 # zConf of the network's PDFs (mdn.z_conf)
    mixture: tuple | None = None                     # (w, mu, sigma) [N, K] tensors, with keep_mixture

    def __len__(self) -> int:
        return len(self.z_spec)


def predict_split(model, catalog: FeaturesCatalog, split: str, batch_size: int,
                  calibration: Calibration | None = None, example_z=(), keep_mixture: bool = False) -> SplitResult:
    """Run ``model`` over one split in batches of ``batch_size`` rows.

    Args:
        model: a ``registry.artifact.PhotozModel`` (standardises with its own training statistics).
        catalog: the labelled features catalog.
        split: train, validation or test.
        batch_size: rows per forward pass (bounds memory).
        calibration: also compute the recalibrated PDFs' z_phot (mean), CRPS, PIT and zConf.
        example_z: keep the mixture of the object whose z_spec is closest to each of these.
        keep_mixture: also keep every object's raw mixture (on the CPU), to fit a recalibration on.

    Returns:
        The split's per-object results.
    """
    parts: list[dict] = []
    kept: list[tuple] = []
    best: list[tuple[float, Example] | None] = [None] * len(example_z)
    for raw, observed, z_spec in catalog.batches(split, batch_size):
        w, mu, sigma = model.mixture_of(raw, observed)
        parts.append(object_scores(w, mu, sigma, torch.from_numpy(z_spec).to(mu.device), calibration))
        _keep_examples(best, example_z, z_spec, parts[-1]["z_phot"], w, mu, sigma)
        if keep_mixture:
            kept.append((w.cpu(), mu.cpu(), sigma.cpu()))
    arrays = concat_scores(parts, calibration is not None)
    calibrated = {k.removeprefix("cal_"): arrays[k] for k in CALIBRATED_SCORES if k in arrays}
    return SplitResult(split, arrays["z_spec"], arrays["z_phot"], arrays["crps"], arrays["pit"], calibrated,
                       [b[1] for b in best if b is not None], arrays["z_conf"],
                       tuple(torch.cat([k[i] for k in kept]) for i in range(3)) if kept else None)


def _keep_examples(best: list, targets, z_spec: np.ndarray, z_phot: np.ndarray, w, mu, sigma) -> None:
    """Replace each target's kept example by this batch's closest object when it is closer."""
    for j, target in enumerate(targets):
        i = int(np.argmin(np.abs(z_spec - target)))
        distance = abs(float(z_spec[i]) - target)
        if best[j] is None or distance < best[j][0]:
            best[j] = (distance, Example(float(z_spec[i]), float(z_phot[i]), w[i].cpu().numpy(),
                                         mu[i].cpu().numpy(), sigma[i].cpu().numpy()))
