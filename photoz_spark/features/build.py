"""One Arrow batch of a matched catalog -> one batch of feature rows, and its summary partials.

Pure Arrow/numpy: Spark calls these per batch (``features.run``), and anything else (a
notebook, a scoring job) can call them on an in-memory table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from photoz_spark.bands import BandCatalog, BandSet
from photoz_spark.features.extinction import deredden, extinction_columns
from photoz_spark.features.selection import select
from photoz_spark.features.sequencing import CHANNELS, UNIT, band_columns, sequence
from photoz_spark.features.split import EXCLUDED, SPLITS, assign_split
from photoz_spark.features.stats import combine_moments, moments
from photoz_spark.flags import FLAGS_COLUMN, Flag, count_flags
from photoz_spark.hats import HEALPIX_COLUMN


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that decides a row's features, selection and split."""

    band_set: BandSet
    registry: BandCatalog
    id_column: str
    ra_column: str
    dec_column: str
    z_column: str
    zwarning_column: str  # "" when the catalog has none
    z_max: float = 5.0
    require_zwarning_zero: bool = True
    require_complete: bool = False
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 0
    deredden: bool = False  # correct fluxes for Milky Way dust (features.extinction) before sequencing

    @property
    def n_steps(self) -> int:
        return len(self.band_set)

    @property
    def n_values(self) -> int:
        return len(self.band_set) * len(CHANNELS)

    def input_columns(self) -> list[str]:
        """The columns read from the input (``flags`` too when it has one)."""
        scalars = [self.id_column, self.ra_column, self.dec_column, self.z_column, self.zwarning_column]
        dust = extinction_columns(self.band_set, self.registry) if self.deredden else []
        return list(dict.fromkeys([c for c in scalars if c] + band_columns(self.band_set) + dust))


def layout(spec: FeatureSpec, matched: str) -> dict:
    """What a feature row means: written as layout.json and as ``photoz_`` HATS properties."""
    return {
        "band_set": spec.band_set.name,
        "bands": spec.band_set.names,
        "n_steps": spec.n_steps,
        "n_channels": len(CHANNELS),
        "channels": list(CHANNELS),
        "unit": UNIT,
        "feature_order": "step-major: features[t * n_channels + c]",
        "matched": matched,
        "id_column": spec.id_column,
        "split": {**dict(zip(SPLITS, spec.fractions, strict=True)), "seed": spec.seed},
        "selection": {"z_column": spec.z_column, "zwarning_column": spec.zwarning_column, "z_max": spec.z_max,
                      "require_zwarning_zero": spec.require_zwarning_zero,
                      "require_complete": spec.require_complete},
        **({"deredden": extinction_columns(spec.band_set, spec.registry)} if spec.deredden else {}),
    }


def output_schema(spec: FeatureSpec, input_schema: pa.Schema) -> pa.Schema:
    """The feature rows' schema: ``id`` is int64 for integer ids, else string."""
    native = input_schema.field(spec.id_column)
    fields = [pa.field("id", pa.int64() if pa.types.is_integer(native.type) else pa.string())]
    if spec.id_column != "id":
        fields.append(native)  # the native id column, kept as it was
    return pa.schema(fields + [
        pa.field("ra", pa.float64()), pa.field("dec", pa.float64()), pa.field("z_spec", pa.float64()),
        pa.field("split", pa.string()),
        pa.field("features", pa.list_(pa.float32())), pa.field("observed", pa.list_(pa.bool_())),
        pa.field("n_observed", pa.int32()), pa.field(FLAGS_COLUMN, pa.int32()),
        pa.field(HEALPIX_COLUMN, pa.int64()),
    ])


def _lists(matrix: np.ndarray) -> pa.ListArray:
    """A 2-D array as an Arrow list column, one row per list."""
    n, width = matrix.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel()))


def list_matrix(column, width: int, dtype=None) -> np.ndarray:
    """An Arrow list column (array or chunked) of fixed length ``width`` as a 2-D numpy array."""
    flat = column.combine_chunks().flatten() if isinstance(column, pa.ChunkedArray) else column.flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=dtype).reshape(-1, width)


def _input_flags(batch) -> np.ndarray:
    if FLAGS_COLUMN not in batch.schema.names:
        return np.zeros(batch.num_rows, dtype=np.int32)
    return pc.fill_null(batch.column(FLAGS_COLUMN), 0).to_numpy(zero_copy_only=False).astype(np.int32)


def feature_batch(batch: pa.RecordBatch | pa.Table, spec: FeatureSpec, schema: pa.Schema) -> pa.RecordBatch:
    """Feature rows of a batch of the input catalog, one per input row.

    Args:
        batch: rows holding ``spec.input_columns()`` and ``_healpix_29`` (``flags`` optional).
        spec: bands, selection and split settings.
        schema: ``output_schema(spec, <input schema>)``.

    Returns:
        A batch in ``schema``: raw features, observed mask, split (``excluded`` for rows not
        selected) and the input's flags OR'ed with the new ones.
    """
    bands_in = deredden(batch, spec.band_set, spec.registry) if spec.deredden else batch
    features, observed, band_flags = sequence(bands_in, spec.band_set, spec.registry)
    zwarning = batch.column(spec.zwarning_column) if spec.zwarning_column else None
    selected, z_flags = select(batch.column(spec.z_column), zwarning, spec.z_max, spec.require_zwarning_zero)
    n_observed = observed.sum(axis=1).astype(np.int32)
    if spec.require_complete:
        selected &= n_observed == spec.n_steps
    ids = batch.column(spec.id_column)
    split = np.where(selected, assign_split(ids, spec.fractions, spec.seed), EXCLUDED)
    columns = {
        spec.id_column: ids,
        "id": ids.cast(schema.field("id").type),  # after the native one: the id column may be "id"
        "ra": pc.cast(batch.column(spec.ra_column), pa.float64()),
        "dec": pc.cast(batch.column(spec.dec_column), pa.float64()),
        "z_spec": pc.cast(batch.column(spec.z_column), pa.float64()),
        "split": pa.array(split, type=pa.string()),
        "features": _lists(features),
        "observed": _lists(observed),
        "n_observed": pa.array(n_observed),
        FLAGS_COLUMN: pa.array(_input_flags(batch) | band_flags | z_flags),
        HEALPIX_COLUMN: batch.column(HEALPIX_COLUMN),
    }
    return pa.RecordBatch.from_arrays([_chunk(columns[name]) for name in schema.names], schema=schema)


def _chunk(column):
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _exclusion_reasons(flags: np.ndarray, n_observed: np.ndarray, excluded: np.ndarray,
                       spec: FeatureSpec) -> dict[str, int]:
    """Excluded rows per reason (a row can have several); only reasons the settings apply."""
    reasons = {"bad_redshift": (flags & Flag.BAD_REDSHIFT) != 0,
               "zwarning": ((flags & Flag.ZWARNING) != 0) & spec.require_zwarning_zero,
               "incomplete": (n_observed < spec.n_steps) & spec.require_complete}
    return {name: int(np.count_nonzero(excluded & mask)) for name, mask in reasons.items()}


def batch_summary(rows: pa.RecordBatch, spec: FeatureSpec) -> dict:
    """Counts and training-split moments of a batch of feature rows (JSON-serialisable).

    Args:
        rows: a batch from ``feature_batch``.
        spec: its settings.

    Returns:
        {"rows", "splits", "excluded_by_reason", "observed" (per band), "flagged" (per flag),
        "train" (``stats.moments`` of the training rows, as lists)}; combine with
        ``combine_summaries``.
    """
    split = rows.column("split").to_numpy(zero_copy_only=False)
    flags = rows.column(FLAGS_COLUMN).to_numpy(zero_copy_only=False)
    observed = list_matrix(rows.column("observed"), spec.n_steps).astype(bool)
    features = list_matrix(rows.column("features"), spec.n_values)
    n_observed = rows.column("n_observed").to_numpy(zero_copy_only=False)
    train = moments(features, observed, split == "train")
    return {
        "rows": rows.num_rows,
        "splits": {name: int(np.count_nonzero(split == name)) for name in (*SPLITS, EXCLUDED)},
        "excluded_by_reason": _exclusion_reasons(flags, n_observed, split == EXCLUDED, spec),
        "observed": observed.sum(axis=0).tolist(),
        "flagged": count_flags(flags),
        "train": {key: value.tolist() for key, value in train.items()},
    }


def combine_summaries(a: dict, b: dict) -> dict:
    """The summary of two sets of rows from the summaries of each."""
    def add(x: dict, y: dict) -> dict:
        return {key: x[key] + y[key] for key in x}

    train = combine_moments(a["train"], b["train"])
    return {
        "rows": a["rows"] + b["rows"],
        "splits": add(a["splits"], b["splits"]),
        "excluded_by_reason": add(a["excluded_by_reason"], b["excluded_by_reason"]),
        "observed": (np.asarray(a["observed"]) + np.asarray(b["observed"])).tolist(),
        "flagged": add(a["flagged"], b["flagged"]),
        "train": {key: value.tolist() for key, value in train.items()},
    }
