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
from photoz_spark.model import BiLSTMMDN, ModelConfig, mixture
from photoz_spark.model.calibration import PitCalibration

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OUTPUT_COLUMNS = ["z_phot_mean", "z_phot_std", "z_phot_median", "n_observed"]
# On CPU, glibc serves an allocation above its mmap threshold (32 MiB at most) with fresh pages
# that the kernel faults in and zeroes on every call. The network's biggest activation is the
# first LSTM's input gates (rows x steps x 2 directions x 4 gates x hidden1 floats), so CPU calls
# run on row chunks that keep it under this. Measured (2-core EPYC, all14, 1 thread): 8192-row
# calls 3.7k rows/s with a third of the time in page faults; 256- to 512-row chunks 7.2-7.4k.
CPU_ACTIVATION_BYTES = 24 * 2**20


def cpu_chunk_rows(config: ModelConfig) -> int:
    """Rows per network call on CPU: a multiple of 64 whose input-gate activation fits CPU_ACTIVATION_BYTES."""
    per_row = config.n_steps * 2 * 4 * config.hidden1 * 4
    return max(64, CPU_ACTIVATION_BYTES // per_row // 64 * 64)


def save_model_files(directory: Path, state_dict: dict, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, directory / WEIGHTS_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


class PhotozModel:
    """The network plus everything needed to turn a catalog's native columns into its input."""

    def __init__(self, directory: str | Path, registry: Registry | None = None, device: str = "cpu",
                 precision: str = "fp32"):
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
        directory = Path(directory)
        self.precision = precision  # the network's autocast precision; mixture maths stays fp32
        self.meta = json.loads((directory / META_FILE).read_text())
        self.registry = registry or load_bands()
        self.band_set = self.registry.band_set(self.meta["layout"]["bands"])
        self.device = torch.device(device)
        self.network = BiLSTMMDN(ModelConfig(**self.meta["model_config"]))
        state = torch.load(directory / WEIGHTS_FILE, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state)
        self.network.to(self.device).eval()
        # Set when the model was trained with train.recalibrate: applied to every PDF summary.
        self.calibration = PitCalibration.from_dict(self.meta.get("calibration"))

    @torch.inference_mode()
    def mixture_of(self, raw_features: np.ndarray, observed: np.ndarray, precision: str | None = None):
        """(w, mu, sigma) fp32 tensors for raw (unstandardised) features.

        Args:
            raw_features: [N, 2 * n_steps] fluxes and errors as ``sequence`` returns them.
            observed: [N, n_steps] booleans.
            precision: fp32, bf16 or fp16 autocast of the network; default ``self.precision``.
        """
        feats = torch.from_numpy(standardise(raw_features, observed, self.meta["stats"])).to(self.device)
        mask = torch.from_numpy(np.asarray(observed, bool)).to(self.device)
        dtype = AUTOCAST_DTYPES[precision or self.precision]
        chunk = cpu_chunk_rows(self.network.config) if self.device.type == "cpu" else max(len(feats), 1)
        outputs = []
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            for start in range(0, max(len(feats), 1), chunk):  # one call even for 0 rows, as before
                outputs.append(self.network(feats[start:start + chunk], mask[start:start + chunk]))
        logits, mu, sigma = (torch.cat([o[i] for o in outputs]).float() for i in range(3))
        return mixture(logits, mu, sigma)

    def predict_table(self, table: pa.Table | pa.RecordBatch) -> pd.DataFrame:
        """Point estimates for a table holding the band set's native flux/error columns."""
        from photoz_spark.model.summaries import estimates  # as the scoring job, calibration included

        raw, observed, _ = sequence(table, self.band_set, self.registry)
        values = estimates(*self.mixture_of(raw, observed), self.calibration)
        return pd.DataFrame({**{c: values[c].cpu().numpy() for c in OUTPUT_COLUMNS[:-1]},
                             "n_observed": np.asarray(observed).sum(axis=1).astype(np.int32)})


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
