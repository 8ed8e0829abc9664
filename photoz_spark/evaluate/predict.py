"""Stream one split of a labelled features catalog through a model, keeping per-object results.

Why the driver and not Spark: evaluation reads one features catalog (a few hundred thousand
rows at the paper's scale, 15 % of them in the test split) column-pruned from Parquet and runs
one forward pass per row; Arrow batches through torch on the driver do that in seconds to
minutes, and what it keeps is a handful of floats per object (for the metrics, medians and
figures), never the whole catalog or all mixtures. Scoring a survey-size catalog is the
scoring job's business (Spark ``mapInArrow``), not this one's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from photoz_spark.errors import MissingInput
from photoz_spark.features.build import list_matrix
from photoz_spark.hats import DATASET_DIR
from photoz_spark.model.calibration import PitCalibration
from photoz_spark.model.scores import CALIBRATED_SCORES, concat_scores, object_scores

LAYOUT_FILE = "layout.json"


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
    calibrated: dict = field(default_factory=dict)   # z_phot, crps, pit of the recalibrated PDFs
    examples: list[Example] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.z_spec)


class LabelledCatalog:
    """A features catalog (jobs/build_features.py output) with its split column, read lazily."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        layout_path = self.directory / LAYOUT_FILE
        if not layout_path.is_file():
            raise MissingInput(f"no features at {self.directory} ({LAYOUT_FILE} missing): "
                                    "run jobs/build_features.py --band-set <band set>")
        self.layout = json.loads(layout_path.read_text())
        self.dataset = ds.dataset(self.directory / DATASET_DIR, format="parquet", exclude_invalid_files=True)

    @property
    def width(self) -> int:
        return self.layout["n_steps"] * self.layout["n_channels"]

    def count(self, split: str) -> int:
        return self.dataset.count_rows(filter=pc.field("split") == split)

    def batches(self, split: str, batch_size: int):
        """(raw features [B, T*C], observed [B, T], z_spec [B]) numpy batches of ``split``."""
        for batch in self.dataset.to_batches(columns=["features", "observed", "z_spec"],
                                             filter=pc.field("split") == split, batch_size=batch_size):
            if batch.num_rows:
                yield (list_matrix(batch["features"], self.width, np.float32),
                       list_matrix(batch["observed"], self.layout["n_steps"], bool),
                       batch["z_spec"].to_numpy().astype(np.float32))

    def id_splits(self):
        """The (id, split) columns of every row, for comparing split assignments."""
        return self.dataset.to_table(columns=["id", "split"])


def predict_split(model, catalog: LabelledCatalog, split: str, batch_size: int,
                  calibration: PitCalibration | None = None, example_z=()) -> SplitResult:
    """Run ``model`` over one split in batches of ``batch_size`` rows.

    Args:
        model: a ``registry.artifact.PhotozModel`` (standardises with its own training statistics).
        catalog: the labelled features catalog.
        split: train, validation or test.
        batch_size: rows per forward pass (bounds memory).
        calibration: also compute the recalibrated PDFs' z_phot (mean), CRPS and PIT.
        example_z: keep the mixture of the object whose z_spec is closest to each of these.

    Returns:
        The split's per-object results.
    """
    parts: list[dict] = []
    best: list[tuple[float, Example] | None] = [None] * len(example_z)
    for raw, observed, z_spec in catalog.batches(split, batch_size):
        w, mu, sigma = model.mixture_of(raw, observed)
        parts.append(object_scores(w, mu, sigma, torch.from_numpy(z_spec).to(mu.device), calibration))
        _keep_examples(best, example_z, z_spec, parts[-1]["z_phot"], w, mu, sigma)
    arrays = concat_scores(parts, calibration is not None)
    calibrated = {k.removeprefix("cal_"): arrays[k] for k in CALIBRATED_SCORES if k in arrays}
    return SplitResult(split, arrays["z_spec"], arrays["z_phot"], arrays["crps"], arrays["pit"], calibrated,
                       [b[1] for b in best if b is not None])


def _keep_examples(best: list, targets, z_spec: np.ndarray, z_phot: np.ndarray, w, mu, sigma) -> None:
    """Replace each target's kept example by this batch's closest object when it is closer."""
    for j, target in enumerate(targets):
        i = int(np.argmin(np.abs(z_spec - target)))
        distance = abs(float(z_spec[i]) - target)
        if best[j] is None or distance < best[j][0]:
            best[j] = (distance, Example(float(z_spec[i]), float(z_phot[i]), w[i].cpu().numpy(),
                                         mu[i].cpu().numpy(), sigma[i].cpu().numpy()))
