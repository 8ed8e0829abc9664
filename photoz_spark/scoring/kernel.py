"""The scoring kernel: raw native photometry (Arrow) -> redshift PDF summaries (Arrow). No Spark.

Features are built exactly as in training and serving (``PhotozModel``: ``sequence`` then
``standardise``). Per row it returns the PDF's mean, median, mode, standard deviation, the
68 % and 95 % central intervals, zConf (the PDF's mass within z_phot_mean +- 0.05 (1 +
z_phot_mean)), the mixture itself (qp ``mixmod`` layout: weights, means, stds, K each), the
number of observed bands and the flags. When the model carries a recalibration
(``calibration.py``, ``train.recalibration``): ``mixture`` (the default) makes the mixture arrays
the recalibrated PDF that every summary describes; ``pit_map`` makes the summaries those of the
recalibrated PDF while the mixture arrays stay the network's (the map is in the output's
properties).

A row none of whose bands is observed cannot be scored: its estimates and mixture are NaN and
it carries ``Flag.NOT_SCORED`` (besides MISSING_BAND and any BAD_FLUX/BAD_ERROR). Rows are
never dropped: rows out == rows in, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from photoz_spark.features.sequencing import sequence
from photoz_spark.flags import FLAGS_COLUMN, Flag
from photoz_spark.model import mdn
from photoz_spark.model.calibration import calibrated_mixture
from photoz_spark.model.summaries import estimates

ESTIMATES = ("z_phot_mean", "z_phot_median", "z_phot_mode", "z_phot_std",
             "z_phot_l68", "z_phot_u68", "z_phot_l95", "z_phot_u95", "z_conf")
MIXTURE = ("mixmod_weights", "mixmod_means", "mixmod_stds")


def precision_check(model, table: pa.Table | pa.RecordBatch, tolerance: float, quantile: float,
                    max_rows: int = 4096) -> dict:
    """Does the network under ``model.precision`` autocast give the fp32 z_mean on this batch?

    Args:
        model: a ``registry.artifact.PhotozModel`` whose ``precision`` is bf16 or fp16.
        table: a batch of the catalog (its first ``max_rows`` scorable rows are used).
        tolerance: allowed |z_mean(half) - z_mean(fp32)|.
        quantile: of the |difference| that must be <= tolerance (0.99: 99 % of rows; 1.0: all).

    Returns:
        rows, the |difference| at ``quantile`` and at its maximum, and ``passed``.
    """
    raw, observed, _ = sequence(table, model.band_set, model.bands)
    rows = np.flatnonzero(observed.any(axis=1))[:max_rows]
    if not len(rows):
        return {"rows": 0, "dz_quantile": 0.0, "dz_max": 0.0, "passed": True}
    z_half = mdn.mean(*model.mixture_of(raw[rows], observed[rows])[:2])
    z_full = mdn.mean(*model.mixture_of(raw[rows], observed[rows], precision="fp32")[:2])
    dz = (z_half - z_full).abs().float().cpu().numpy()
    at_q = float(np.quantile(dz, quantile))
    return {"rows": len(rows), "dz_quantile": at_q, "dz_max": float(dz.max()), "passed": at_q <= tolerance}


def output_schema(input_schema: pa.Schema, keep: Sequence[str] = (), n_components: int = 15) -> pa.Schema:
    """The kernel's output schema: the ``keep`` columns (types as in the input), then the estimates
    and the mixture as fixed-size lists of ``n_components`` (the model's K): no offsets to build,
    write or read, and every reader knows K from the schema."""
    return pa.schema([input_schema.field(c) for c in keep]
                     + [pa.field(c, pa.float32()) for c in ESTIMATES]
                     + [pa.field(c, pa.list_(pa.float32(), n_components)) for c in MIXTURE]
                     + [pa.field("n_observed", pa.int32()), pa.field(FLAGS_COLUMN, pa.int32())])


def _list_column(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(np.float32, copy=False)),
                                             values.shape[1])


@torch.inference_mode()
def score_batch(model, table: pa.Table | pa.RecordBatch, keep: Sequence[str] = ()) -> pa.RecordBatch:
    """Score one batch.

    Args:
        model: a ``registry.artifact.PhotozModel``.
        table: rows holding the model band set's native flux/error columns; an integer ``flags``
            column, if present, is ORed into the output flags.
        keep: input columns passed through unchanged (ids, coordinates, ``_healpix_29``).

    Returns:
        A RecordBatch with ``output_schema(table.schema, keep, K)``, one row per input row, same order.
    """
    if isinstance(table, pa.Table):
        table = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
            [], schema=table.schema)
    n = table.num_rows
    raw, observed, flags = sequence(table, model.band_set, model.bands)
    n_observed = observed.sum(axis=1).astype(np.int32)
    if FLAGS_COLUMN in table.schema.names:
        flags |= np.nan_to_num(table.column(FLAGS_COLUMN).to_numpy(zero_copy_only=False)).astype(np.int32)
    scorable = n_observed > 0
    flags |= np.where(scorable, 0, Flag.NOT_SCORED).astype(np.int32)

    k = model.network.config.n_components
    est = {c: np.full(n, np.nan, np.float32) for c in ESTIMATES}
    mix = {c: np.full((n, k), np.nan, np.float32) for c in MIXTURE}
    rows = np.flatnonzero(scorable)
    if len(rows):
        # The PDF of the output: a mixture recalibration is applied to the mixture itself.
        w, mu, sigma, pit_map = calibrated_mixture(*model.mixture_of(raw[rows], observed[rows]), model.calibration)
        for c, v in estimates(w, mu, sigma, pit_map).items():
            est[c][rows] = v.cpu().numpy()
        for c, v in zip(MIXTURE, (w, mu, sigma), strict=True):
            mix[c][rows] = v.cpu().numpy()

    schema = output_schema(table.schema, keep, k)
    arrays = [table.column(c) for c in keep]
    arrays += [pa.array(est[c]) for c in ESTIMATES]
    arrays += [_list_column(mix[c]) for c in MIXTURE]
    arrays += [pa.array(n_observed), pa.array(flags.astype(np.int32))]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
