"""Load a trained LSTM-MDNz model from its files and predict redshift PDFs from raw photometry.

A model directory holds ``weights.pt`` (a state dict, loaded with ``weights_only=True`` so no
pickled code runs) and ``model.json`` (network config, band set, feature layout and the
training standardisation statistics). The MLflow pyfunc wrapper and the scoring job both use
``PhotozModel``, so a model predicts the same way everywhere.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from photoz_spark.bands import Registry, load_bands
from photoz_spark.features.sequencing import sequence
from photoz_spark.features.stats import standardise
from photoz_spark.model import BiLSTMMDN, ModelConfig, mdn, mixture

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
OUTPUT_COLUMNS = ["z_phot_mean", "z_phot_std", "z_phot_median", "n_observed"]


def save_model_files(directory: Path, state_dict: dict, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, directory / WEIGHTS_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


class PhotozModel:
    """The network plus everything needed to turn a catalog's native columns into its input."""

    def __init__(self, directory: str | Path, registry: Registry | None = None, device: str = "cpu"):
        directory = Path(directory)
        self.meta = json.loads((directory / META_FILE).read_text())
        self.registry = registry or load_bands()
        self.band_set = self.registry.band_set(self.meta["layout"]["bands"])
        self.device = torch.device(device)
        self.network = BiLSTMMDN(ModelConfig(**self.meta["model_config"]))
        state = torch.load(directory / WEIGHTS_FILE, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state)
        self.network.to(self.device).eval()

    @torch.inference_mode()
    def mixture_of(self, raw_features: np.ndarray, observed: np.ndarray):
        """(w, mu, sigma) tensors for raw (unstandardised) features."""
        feats = standardise(raw_features, observed, self.meta["stats"])
        logits, mu, sigma = self.network(torch.from_numpy(feats).to(self.device),
                                         torch.from_numpy(np.asarray(observed, bool)).to(self.device))
        return mixture(logits, mu, sigma)

    def predict_table(self, table: pa.Table | pa.RecordBatch) -> pd.DataFrame:
        """Point estimates for a table holding the band set's native flux/error columns."""
        raw, observed, _ = sequence(table, self.band_set, self.registry)
        w, mu, sigma = self.mixture_of(raw, observed)
        return pd.DataFrame({
            "z_phot_mean": mdn.mean(w, mu).cpu().numpy(),
            "z_phot_std": mdn.std(w, mu, sigma).cpu().numpy(),
            "z_phot_median": mdn.median(w, mu, sigma).cpu().numpy(),
            "n_observed": np.asarray(observed).sum(axis=1).astype(np.int32),
        })


with warnings.catch_warnings():  # mlflow.pyfunc asks for type hints on its own and our classes
    warnings.simplefilter("ignore", UserWarning)
    try:  # the MLflow pyfunc flavour, for `mlflow.pyfunc.load_model` and `mlflow models serve`
        import mlflow.pyfunc

        class PhotozPyfunc(mlflow.pyfunc.PythonModel):
            """pyfunc wrapper: input = a DataFrame of the band set's native columns."""

            def load_context(self, context):
                self.model = PhotozModel(Path(context.artifacts["model_dir"]))

            def predict(self, context, model_input, params=None):
                table = pa.Table.from_pandas(pd.DataFrame(model_input), preserve_index=False)
                return self.model.predict_table(table)
    except ImportError:  # a GPU host with torch only
        PhotozPyfunc = None
