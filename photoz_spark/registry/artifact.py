"""The registered model's artifact: save it, load it, predict redshift PDFs from raw photometry.

A model directory holds ``weights.pt`` (a state dict, loaded with ``weights_only=True`` so no
pickled code runs) and ``model.json`` (network config, feature layout, the training
standardisation statistics, and the band set: its name and each band's native flux/error
columns, unit and error kind, so the model needs no ``conf/bands.yaml`` to run). A deep
ensemble (``train.ensemble`` > 1) is one such model: ``weights.pt`` holds every member and
``model.json`` says ``"ensemble": M`` (``model/ensemble.py``); it predicts one mixture. The MLflow
pyfunc (``registry/mlflow_model.py``), training, scoring and evaluation all use
``PhotozModel``, so a model predicts the same way everywhere.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from photoz_spark.bands import Band, BandCatalog, BandSet, Catalog, load_bands
from photoz_spark.errors import InputError
from photoz_spark.features.sequencing import sequence
from photoz_spark.model import ModelConfig, mixture
from photoz_spark.model import calibration as cal
from photoz_spark.model.ensemble import build_network
from photoz_spark.model.network import forward_chunks

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OUTPUT_COLUMNS = ["z_phot_mean", "z_phot_std", "z_phot_median", "z_conf", "n_observed"]
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


def band_definitions(bands: BandCatalog, band_set: BandSet) -> dict:
    """What ``model.json`` stores of the band set: its name, its bands (native columns, unit,
    error kind, ...), the units' values in Jy and the catalogs the bands live in."""
    catalogs = dict.fromkeys(b.catalog for b in band_set.bands)
    return {"band_set": band_set.name, "bands": [asdict(b) for b in band_set.bands],
            "units": {u: bands.units[u] for u in dict.fromkeys(b.unit for b in band_set.bands)},
            "catalogs": [asdict(bands.catalogs[c]) for c in catalogs]}


def bands_from_definitions(data: dict) -> tuple[BandCatalog, BandSet]:
    """The band catalog and band set stored by ``band_definitions`` (no bands file read)."""
    bands = {b["name"]: Band(**b) for b in data["bands"]}
    catalog = BandCatalog(bands=bands, catalogs={c["name"]: Catalog(**c) for c in data["catalogs"]},
                          band_sets={data["band_set"]: tuple(bands)}, units=dict(data["units"]))
    return catalog, catalog.band_set(data["band_set"])


def save_model_files(directory: Path, state_dict: dict, meta: dict, bands: BandCatalog | None = None) -> None:
    """Write ``weights.pt`` and ``model.json``.

    Args:
        directory: the model folder (created).
        state_dict: the network's weights.
        meta: model_config, layout (with band_set and bands), stats, and anything else to keep;
            ``ensemble``: M when ``state_dict`` is an EnsembleMDN's (absent: one network).
        bands: the band catalog the model was trained with: its band set's definitions are
            stored, so the model loads without a bands file.
    """
    if bands is not None:
        band_set = replace(bands.band_set(meta["layout"]["bands"]), name=meta["layout"]["band_set"])
        meta = {**meta, "bands": band_definitions(bands, band_set)}
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, directory / WEIGHTS_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


def model_bands(meta: dict, bands: BandCatalog | None = None) -> tuple[BandCatalog, BandSet]:
    """The band catalog and band set of a model: those stored in it; for a model saved before
    they were stored, ``bands`` (default ``conf/bands.yaml``) and the layout's band-set name."""
    if "bands" in meta:
        return bands_from_definitions(meta["bands"])
    bands = bands or load_bands()
    layout = meta["layout"]
    return bands, replace(bands.band_set(layout["bands"]), name=layout.get("band_set", "custom"))


def load_weights(path: Path, device) -> dict:
    """The state dict in ``path``, loaded with ``weights_only=True`` (no pickled code runs).

    Raises:
        InputError: one line naming the file when it holds anything but tensors (a pickled
            object: refused, never loaded with code execution) or is not a torch file at all.
    """
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # not a pickle of tensors at all (garbage, truncated)
            raise InputError(f"{path} is not a readable torch weights file (not a state dict that "
                             "torch.load(weights_only=True) can read)") from None
        raise InputError(f"{path} holds pickled Python objects, not only tensors: refused (a model's weights "
                         "are loaded with weights_only=True so no code in them runs); re-register the model "
                         "from a plain state dict") from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path} is not a readable torch weights file ({reason})") from None


def ensemble_members(meta: dict) -> int:
    """M of a deep ensemble (model.json ``"ensemble": M``, one weights.pt holding every member);
    1 for a single network, including every model saved before ensembles existed."""
    members = meta.get("ensemble", 1)
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise InputError(f"{META_FILE}: 'ensemble' must be a whole number of members >= 1, got {members!r}")
    return members


class PhotozModel:
    """The network plus everything needed to turn a catalog's native columns into its input."""

    def __init__(self, directory: str | Path, bands: BandCatalog | None = None, device: str = "cpu",
                 precision: str = "fp32"):
        """Load the model in ``directory``.

        Args:
            directory: holds weights.pt and model.json.
            bands: used only for a model that does not carry its band definitions (older
                models); default conf/bands.yaml.
            device: torch device of the network.
            precision: the network's autocast precision (fp32, bf16, fp16).
        """
        if precision not in AUTOCAST_DTYPES:
            raise InputError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
        directory = Path(directory)
        self.precision = precision  # the network's autocast precision; mixture maths stays fp32
        self.meta = json.loads((directory / META_FILE).read_text())
        self.bands, self.band_set = model_bands(self.meta, bands)
        self.device = torch.device(device)
        self.network = build_network(ModelConfig(**self.meta["model_config"]), ensemble_members(self.meta))
        try:
            self.network.load_state_dict(load_weights(directory / WEIGHTS_FILE, self.device))
        except RuntimeError as err:  # torch lists every mismatched tensor, one per line
            raise InputError(f"{directory / WEIGHTS_FILE} does not fit the network of {META_FILE} "
                             f"({str(err).splitlines()[0]})") from None
        self.network.to(self.device).eval()
        # Set when the model was trained with train.recalibrate (a MixtureCalibration or a
        # PitCalibration, train.recalibration): applied to every PDF summary.
        self.calibration = cal.from_dict(self.meta.get("calibration"))
        self._scale = None  # the statistics as float32 tensors on the device (standardised)

    def standardised(self, raw_features: np.ndarray, observed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input on the model's device: ``features.stats.standardise`` in float32
        (the same representation: ``flux`` or ``asinh_mag``, from the model's stats).

        The raw float32 features go to the device as they are and are standardised there, so
        a scoring task's host does no float64 pass (standardise's float64 arithmetic, then a
        cast, cost more than the network on a GPU). Differs from ``standardise`` by float32
        rounding only (tested).

        Returns:
            features float32 [N, T*C] (0 for unobserved steps) and the observed mask bool [N, T].
        """
        stats = self.meta["stats"]
        if self._scale is None or self._scale[0].device != self.device:
            keys = ("mean", "std", "softening") if "softening" in stats else ("mean", "std")
            self._scale = tuple(torch.tensor(stats[k], dtype=torch.float32, device=self.device) for k in keys)
        mean, std = self._scale[:2]
        n = len(raw_features)
        raw = np.ascontiguousarray(raw_features, dtype=np.float32)
        if not raw.flags.writeable:  # a zero-copy Arrow view: torch warns about read-only arrays
            raw = raw.copy()
        x = torch.from_numpy(raw).to(self.device)
        mask = torch.from_numpy(np.asarray(observed, bool)).to(self.device)
        if x.shape[1:] != (mean.numel(),) or mask.shape[1:] != mean.shape[:1]:
            raise ValueError(f"features {tuple(x.shape)} / observed {tuple(mask.shape)} do not fit the model's "
                             f"{mean.shape[0]} bands x {mean.shape[1]} channels")
        steps = x.view(n, *mean.shape)
        representation = stats.get("representation", "flux")  # as features.stats.standardise
        if representation == "asinh_mag":
            two_b = 2 * self._scale[2]
            values = torch.stack([torch.asinh(steps[..., 0] / two_b),
                                  steps[..., 1] / torch.hypot(two_b, steps[..., 0])], dim=-1)
        elif representation == "flux":
            values = (steps - mean) / std
        else:
            raise ValueError(f"the model's stats have representation {representation!r}; this version knows flux, asinh_mag")
        scaled = torch.where(mask[:, :, None], values, 0.0)
        return scaled.reshape(n, mean.numel()), mask

    @torch.inference_mode()
    def mixture_of(self, raw_features: np.ndarray, observed: np.ndarray, precision: str | None = None):
        """(w, mu, sigma) fp32 tensors for raw (unstandardised) features.

        Args:
            raw_features: [N, 2 * n_steps] fluxes and errors as ``sequence`` returns them.
            observed: [N, n_steps] booleans.
            precision: fp32, bf16 or fp16 autocast of the network; default ``self.precision``.
        """
        feats, mask = self.standardised(raw_features, observed)
        dtype = AUTOCAST_DTYPES[precision or self.precision]
        chunk = cpu_chunk_rows(self.network.config) if self.device.type == "cpu" else max(len(feats), 1)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits, mu, sigma = forward_chunks(self.network, feats, mask, chunk)
        return mixture(logits.float(), mu.float(), sigma.float())

    def predict_table(self, table: pa.Table | pa.RecordBatch) -> pd.DataFrame:
        """Point estimates for a table holding the band set's native flux/error columns."""
        from photoz_spark.model.summaries import estimates  # as the scoring job, calibration included

        raw, observed, _ = sequence(table, self.band_set, self.bands)
        values = estimates(*self.mixture_of(raw, observed), self.calibration)
        return pd.DataFrame({**{c: values[c].cpu().numpy() for c in OUTPUT_COLUMNS[:-1]},
                             "n_observed": np.asarray(observed).sum(axis=1).astype(np.int32)})
