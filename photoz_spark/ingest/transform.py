"""One input chunk -> one chunk of the pipeline's native catalog (pure Arrow/numpy, no Spark).

Columns are copied or computed, bands split out of array columns and converted to the band's
``bands.yaml`` unit and error kind, ``flags`` and ``_healpix_29`` added. Rows whose coordinates
cannot be placed on the sky are handled by the ``bad_coords`` policy:

* ``keep`` (default): the row is kept, flagged ``BAD_COORDS`` and given ``_healpix_29 = 0``
  (it lands in pixel 0's partition); the crossmatch keeps such left rows unmatched and flagged,
  and never matches such right rows. Counted in the summary.
* ``drop``: the row is left out and counted in the summary.
* ``error``: the ingest stops with an error naming the file and the first such row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from photoz_spark import hats
from photoz_spark.bands import Registry
from photoz_spark.flags import FLAGS_COLUMN, Flag
from photoz_spark.ingest import IngestError
from photoz_spark.ingest.survey_map import BandSpec, ColumnSpec, SurveyMap

BAD_COORDS_POLICIES = ("keep", "drop", "error")
MAG_CHECK_MIN_VALUES = 100       # the magnitude heuristic needs this many measured fluxes in a chunk
MAG_RANGE = (10.0, 30.0)         # every measured "flux" in here and none negative: magnitudes
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
BAND_TYPE = pa.float32()         # as the products (and the simulated catalogs) store fluxes


def output_schema(smap: SurveyMap, present: set[str] | None = None) -> pa.Schema:
    """The written schema: map columns (optional ones only if ``present``), bands, flags, index."""
    fields = [pa.field(c.name, _ARROW_TYPES[c.type]) for c in smap.columns
              if not c.optional or present is None or c.name in present]
    fields += [pa.field(n, BAND_TYPE) for b in smap.bands for n in (b.band.flux, b.band.err)]
    fields += [pa.field(FLAGS_COLUMN, pa.int32(), nullable=False),
               pa.field(hats.HEALPIX_COLUMN, pa.int64(), nullable=False)]
    return pa.schema(fields)


def valid_coords(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """RA in [0, 360), Dec in [-90, 90], both finite: Flag.BAD_COORDS otherwise."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(ra) & np.isfinite(dec) & (ra >= 0.0) & (ra < 360.0) & (dec >= -90.0) & (dec <= 90.0)


@dataclass
class IngestStats:
    """Running totals over all chunks of all files."""

    rows_read: int = 0
    rows_kept: int = 0
    bad_coords: int = 0
    dropped: int = 0
    out_of_range: dict[str, int] = field(default_factory=dict)


class ChunkTransformer:
    """Turns one file's chunks into native-catalog chunks.

    Args:
        smap: the survey map.
        registry: the bands file's contents.
        resolved: map column name -> the file's column name (as the file spells it); an
            optional column the file lacks is absent.
        schema: the output schema (``output_schema``), the same for every file.
        bad_coords: one of BAD_COORDS_POLICIES.
        check_units: whether to apply the magnitude heuristic to flux values.
        stats: totals to add to.
    """

    def __init__(self, smap: SurveyMap, registry: Registry, resolved: dict[str, str], schema: pa.Schema,
                 bad_coords: str, check_units: bool, stats: IngestStats):
        self.smap, self.registry, self.resolved, self.schema = smap, registry, resolved, schema
        self.bad_coords, self.check_units, self.stats = bad_coords, check_units, stats

    def __call__(self, batch: pa.RecordBatch, where: str) -> tuple[pa.RecordBatch, np.ndarray]:
        """Transform a chunk.

        Args:
            batch: the file's columns for some rows.
            where: "file rows a..b", for error messages.

        Returns:
            (the output batch, the kept rows' ``_healpix_29``).
        """
        n = batch.num_rows
        columns: dict[str, pa.Array] = {}
        for spec in self.smap.columns:
            if self.schema.get_field_index(spec.name) >= 0:
                columns[spec.name] = self._column(batch, spec, where)
        for band in self.smap.bands:
            columns[band.band.flux], columns[band.band.err] = self._band(batch, band, where)
        cat = self.smap.catalog
        ra = _floats(columns[cat.ra])
        dec = _floats(columns[cat.dec])
        ok = valid_coords(ra, dec)
        n_bad = int(n - ok.sum())
        if n_bad and self.bad_coords == "error":
            first = int(np.flatnonzero(~ok)[0])
            raise IngestError(f"{where}: {n_bad} rows with RA/Dec not finite or out of range (first: row "
                              f"{first} of the chunk, RA={ra[first]}, Dec={dec[first]}); set ingest.bad_coords="
                              "keep (flag them) or drop (count and leave out)")
        h29 = np.zeros(n, dtype=np.int64)
        h29[ok] = hats.healpix29(ra[ok], dec[ok])
        columns[FLAGS_COLUMN] = pa.array(np.where(ok, 0, int(Flag.BAD_COORDS)).astype(np.int32))
        columns[hats.HEALPIX_COLUMN] = pa.array(h29)
        out = pa.RecordBatch.from_arrays([columns[f.name] for f in self.schema], schema=self.schema)
        self.stats.rows_read += n
        self._count_ranges(out)
        if n_bad and self.bad_coords == "drop":
            out, h29 = out.filter(pa.array(ok)), h29[ok]
            self.stats.dropped += n_bad
        elif n_bad:
            self.stats.bad_coords += n_bad
        self.stats.rows_kept += out.num_rows
        return out, h29

    def _source(self, batch: pa.RecordBatch, ref, where: str) -> pa.Array:
        values = batch.column(self.resolved[ref.column])
        if ref.index is None:
            return values
        try:
            return pc.list_element(values, ref.index)
        except pa.ArrowException as err:
            raise IngestError(f"{where}: column {ref}: {err}") from None

    def _column(self, batch: pa.RecordBatch, spec: ColumnSpec, where: str) -> pa.Array:
        target = _ARROW_TYPES[spec.type]
        if spec.compute == "ls_id":
            release, brickid, objid = (_ints(batch.column(self.resolved[c])) for c in spec.inputs)
            # The Legacy Surveys' unique id: RELEASE << 40 | BRICKID << 16 | OBJID.
            return pa.array((release << 40) | (brickid << 16) | objid)
        if spec.source.column not in self.resolved:  # an optional column this file lacks
            return pa.nulls(batch.num_rows, target)
        values = self._source(batch, spec.source, where)
        if spec.type == "string" and pa.types.is_binary(values.type):
            values = pc.utf8_rtrim_whitespace(values.cast(pa.string()))
        try:
            return values.cast(target)  # a safe cast: an overflowing uint64 id is an error, not a wrap
        except pa.ArrowException as err:
            raise IngestError(f"{where}: column {spec.source} cannot be read as {spec.type}: {err}") from None

    def _band(self, batch: pa.RecordBatch, spec: BandSpec, where: str) -> tuple[pa.Array, pa.Array]:
        flux, flux_null = self._measurement(batch, spec.flux, where)
        err, err_null = self._measurement(batch, spec.err, where)
        # A NaN flux without an error (DP1 writes NaN flux and NaN error where a band has no
        # measurement) is "not measured": nulls, as an unmatched band, so the features flag
        # MISSING_BAND only. A NaN flux that has an error stays NaN: a bad measurement (BAD_FLUX).
        unmeasured = np.isnan(flux) & ~flux_null & (np.isnan(err) | err_null)
        flux_null, err_null = flux_null | unmeasured, err_null | unmeasured
        if self.check_units:
            _check_not_magnitudes(flux[~flux_null], spec, where)
        factor = spec.flux_factor(self.registry)
        flux = flux * factor
        with np.errstate(divide="ignore", invalid="ignore"):
            if spec.err_kind == "ivar" and spec.band.err_kind == "ivar":
                out_err = err / factor**2  # ivar = 0 ("not measured" in DR16Q, LS) stays 0
            elif spec.err_kind == "ivar":
                out_err = np.where(err > 0, factor / np.sqrt(err), np.nan)
                unmeasured = err == 0  # a sigma has no "not measured" value: null flux and error
                flux_null, err_null = flux_null | unmeasured, err_null | unmeasured
            elif spec.band.err_kind == "ivar":
                sigma = err * factor  # a sigma <= 0 or NaN gives a NaN ivar: the features flag BAD_ERROR
                out_err = np.where(sigma > 0, 1.0 / sigma**2, np.nan)
            else:
                out_err = err * factor
        return (pa.array(flux.astype(np.float32), mask=flux_null),
                pa.array(out_err.astype(np.float32), mask=err_null))

    def _measurement(self, batch: pa.RecordBatch, ref, where: str) -> tuple[np.ndarray, np.ndarray]:
        """(float64 values, null mask): Arrow nulls and the map's null_values are nulls."""
        values = self._source(batch, ref, where).cast(pa.float64())
        null = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        data = np.asarray(values.fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
        if self.smap.null_values:
            null |= np.isin(data, self.smap.null_values)
        return data, null

    def _count_ranges(self, out: pa.RecordBatch) -> None:
        for spec in self.smap.columns:
            if spec.range is None or out.schema.get_field_index(spec.name) < 0:
                continue
            values = _floats(out.column(spec.name))
            with np.errstate(invalid="ignore"):
                outside = int(np.count_nonzero((values < spec.range[0]) | (values > spec.range[1])))
            if outside:
                self.stats.out_of_range[spec.name] = self.stats.out_of_range.get(spec.name, 0) + outside


def _check_not_magnitudes(flux: np.ndarray, spec: BandSpec, where: str) -> None:
    """Refuse fluxes that look like magnitudes: many values, all finite ones within 10-30.

    Real flux columns of faint sources scatter around zero (negative values are common in forced
    photometry) and span decades; AB magnitudes of survey sources sit between ~10 and ~30.
    """
    finite = flux[np.isfinite(flux)]
    if finite.size >= MAG_CHECK_MIN_VALUES and finite.min() >= MAG_RANGE[0] and finite.max() <= MAG_RANGE[1]:
        raise IngestError(
            f"{where}: column {spec.flux} (band {spec.band.name}) holds magnitudes, not fluxes: all "
            f"{finite.size} values are within {MAG_RANGE[0]:g}-{MAG_RANGE[1]:g} and none is negative; map a flux "
            f"column in {spec.unit} (or set ingest.check_units=false if these really are fluxes)")


def _floats(values: pa.Array) -> np.ndarray:
    return np.asarray(values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


def _ints(values: pa.Array) -> np.ndarray:
    return np.asarray(values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)


def choose_order(pixel_counts: np.ndarray, max_order: int, max_rows: int) -> tuple[int, int]:
    """The smallest HEALPix order whose fullest pixel holds at most ``max_rows`` rows.

    Args:
        pixel_counts: rows per nested pixel at ``max_order`` (length 12 * 4**max_order).
        max_order: the finest order allowed.
        max_rows: the most rows a partition should hold.

    Returns:
        (order, rows in its fullest pixel); ``max_order`` if no order achieves the limit.
    """
    for order in range(max_order + 1):
        # Nested indices: the 4**(max_order - order) children of a pixel are contiguous.
        largest = int(pixel_counts.reshape(12 * 4**order, -1).sum(axis=1).max(initial=0))
        if largest <= max_rows:
            return order, largest
    return max_order, largest
