"""Milky Way dereddening of a batch's band fluxes, from the extinction columns its catalogs carry.

Which column holds each band's correction, and what it holds, is ``extinction`` in
conf/bands.yaml: DESI LS ``MW_TRANSMISSION_*`` (flux / T) and SDSS ``extinction_*`` (A in mag,
flux x 10^(0.4 A)). Bands without such a column (GALEX in DR16Q, LSST) are left as they are.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from photoz_spark.bands import BandCatalog, BandSet


def extinction_columns(band_set: BandSet, registry: BandCatalog) -> list[str]:
    """The extinction columns the band set's bands have (possibly none)."""
    found = [registry.extinction_column(b.name) for b in band_set.bands]
    return [column for column, _ in filter(None, found)]


def deredden(batch: pa.RecordBatch | pa.Table, band_set: BandSet, registry: BandCatalog) -> pa.RecordBatch:
    """The batch with each band's flux and error corrected for Milky Way extinction.

    Args:
        batch: rows holding the bands' flux/error columns and ``extinction_columns``.
        band_set: the bands to correct.
        registry: bands.yaml (which column, and whether transmission or magnitudes).
    Returns:
        A RecordBatch with the same columns; corrected fluxes and errors as float64. A null or
        non-positive transmission leaves that value uncorrected (the flux keeps its own flags).
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], batch.schema)
    columns = {name: batch.column(name) for name in batch.schema.names}
    for band in band_set.bands:
        found = registry.extinction_column(band.name)
        if found is None:
            continue
        column, kind = found
        value = np.asarray(columns[column].to_numpy(zero_copy_only=False), float)
        boost = 1.0 / value if kind == "transmission" else 10.0 ** (0.4 * value)
        boost = np.where(np.isfinite(boost) & (boost > 0), boost, 1.0)
        flux = np.asarray(columns[band.flux].to_numpy(zero_copy_only=False), float)
        err = np.asarray(columns[band.err].to_numpy(zero_copy_only=False), float)
        err = err / boost ** 2 if band.err_kind == "ivar" else err * boost
        columns[band.flux] = pa.array(flux * boost, mask=_nulls(columns[band.flux]))
        columns[band.err] = pa.array(err, mask=_nulls(columns[band.err]))
    return pa.RecordBatch.from_pydict(columns)


def _nulls(column) -> np.ndarray:
    return np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
