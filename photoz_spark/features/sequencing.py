"""Native photometry -> model input: one sequence step per band, two channels per step.

The same function serves training (on a matched catalog) and scoring (on a raw survey
catalog): it only needs a table holding the native flux and error columns of a band set.

Rule for what counts as a measurement, band by band:

* no measurement (``observed`` False, no flag beyond MISSING_BAND): the flux is null (an
  unmatched row), or the error is an inverse variance of exactly 0 (DR16Q stores a GALEX
  non-detection as flux 0, ivar 0: "no information", whatever the flux says), or the flux is
  NaN with a NaN or null error (the Rubin DP1 Object table's "not measured" in a band);
* bad measurement (``observed`` False): a non-finite flux with an error -> BAD_FLUX; a null, NaN,
  infinite or negative ivar, or a null, NaN, infinite, zero or negative sigma -> BAD_ERROR;
* otherwise observed: a finite flux with a positive finite error.

Every row with at least one unobserved band also gets MISSING_BAND.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from photoz_spark.bands import BandCatalog, BandSet
from photoz_spark.flags import Flag

CHANNELS = ("flux", "flux_err")
UNIT = "uJy"
UJY_PER_JY = 1e6


def band_columns(band_set: BandSet) -> list[str]:
    """The native columns a table needs for a band set: flux then error, band by band."""
    return [column for band in band_set.bands for column in (band.flux, band.err)]


def float_values(column) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow column as float64 values (NaN where null) and its null mask.

    Args:
        column: a pyarrow Array or ChunkedArray of a numeric type.

    Returns:
        (values, is_null), both numpy arrays of the column's length.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    is_null = column.is_null().to_numpy(zero_copy_only=False)
    values = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return values, is_null


def _column(data, name: str):
    if name not in data.schema.names:
        raise KeyError(f"column {name!r} not found (have: {', '.join(data.schema.names)})")
    return data.column(name)


def _sigma(err: np.ndarray, err_null: np.ndarray, err_kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigma in the flux unit, no-measurement mask, bad-error mask) of an error column."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = 1.0 / np.sqrt(err) if err_kind == "ivar" else err
    no_measurement = (err == 0) if err_kind == "ivar" else np.zeros(len(err), dtype=bool)
    bad = err_null | ~(np.isfinite(sigma) & (sigma > 0))
    return sigma, no_measurement, bad & ~no_measurement


def sequence(data: pa.Table | pa.RecordBatch, band_set: BandSet,
             registry: BandCatalog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn native band columns into the model's input sequence.

    Args:
        data: an Arrow table or batch holding every band's native flux and error columns
            (other columns are ignored).
        band_set: the bands, in sequence (wavelength) order: ``registry.band_set(name)``.
        registry: the band registry (for each unit's value in Jy).

    Returns:
        features: float32 [N, T*C], step-major (column ``t * C + c``), channels ``CHANNELS``
            in ``UNIT``; NaN in both channels where a band is not observed.
        observed: bool [N, T], True where the band has a usable measurement.
        flags: int32 [N], BAD_FLUX | BAD_ERROR | MISSING_BAND bits (see the module docstring).

    Raises:
        KeyError: a band's column is not in ``data``.
    """
    n, n_steps = data.num_rows, len(band_set)
    features = np.full((n, n_steps, len(CHANNELS)), np.nan, dtype=np.float32)
    observed = np.zeros((n, n_steps), dtype=bool)
    flags = np.zeros(n, dtype=np.int32)
    for t, band in enumerate(band_set.bands):
        flux, flux_null = float_values(_column(data, band.flux))
        err, err_null = float_values(_column(data, band.err))
        sigma, no_measurement, bad_error = _sigma(err, err_null, band.err_kind)
        no_measurement |= np.isnan(flux) & np.isnan(err)  # NaN flux, no error (null reads NaN too)
        measured = ~flux_null & ~no_measurement
        bad_flux = measured & ~np.isfinite(flux)
        bad_error &= measured
        ok = measured & ~bad_flux & ~bad_error
        scale = registry.to_jy(band.unit) * UJY_PER_JY  # native unit -> uJy
        features[ok, t, 0] = flux[ok] * scale
        features[ok, t, 1] = sigma[ok] * scale
        observed[:, t] = ok
        flags |= np.where(bad_flux, Flag.BAD_FLUX, 0).astype(np.int32)
        flags |= np.where(bad_error, Flag.BAD_ERROR, 0).astype(np.int32)
    flags |= np.where(observed.all(axis=1), 0, Flag.MISSING_BAND).astype(np.int32)
    return features.reshape(n, n_steps * len(CHANNELS)), observed, flags
