"""Readers of catalog files: one small class per format behind one interface.

Every reader describes a file's columns (type, array width, unit) without reading its rows, and
streams the rows as Arrow record batches of at most ``chunk_rows`` rows, so a multi-GB file
never has to fit in memory. Every failure is an ``IngestError`` that names the file.
"""

from __future__ import annotations

import glob
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from photoz_spark.ingest import IngestError

FORMATS = ("fits", "csv", "parquet")
# What astropy raises for files it cannot parse (it has no single exception type for that).
_FITS_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, AttributeError)
_EXTENSIONS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".csv": "csv",
               ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class SourceColumn:
    """A column of an input file."""

    name: str
    type: pa.DataType      # the element type, for array columns
    width: int | None      # elements per row of an array column (-1: variable length); None: scalar
    unit: str | None       # as the file states it (FITS TUNIT, Parquet field metadata 'unit')


class CatalogReader(ABC):
    """Streams one catalog file.

    Args:
        path: the file.
        chunk_rows: the most rows per yielded batch.
    """

    format = ""

    def __init__(self, path: str | Path, chunk_rows: int):
        self.path = Path(path)
        self.chunk_rows = int(chunk_rows)

    @abstractmethod
    def describe(self) -> dict[str, SourceColumn]:
        """The file's columns by name, read from its header/schema only."""

    @abstractmethod
    def batches(self, columns: list[str], types: dict[str, pa.DataType] | None = None) -> Iterator[pa.RecordBatch]:
        """Yield the named columns in batches of at most ``chunk_rows`` rows.

        Args:
            columns: exact column names, as ``describe`` gives them.
            types: type hints for formats without a schema (CSV): column -> Arrow type.
        """

    def _error(self, what: str, err: BaseException | str) -> IngestError:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return IngestError(f"{self.path}: {what}: {text}")


class FitsReader(CatalogReader):
    """A FITS binary table, memory-mapped and read one row slice at a time (astropy)."""

    format = "fits"

    def __init__(self, path: str | Path, chunk_rows: int, hdu: int = 1):
        super().__init__(path, chunk_rows)
        self.hdu = hdu

    def _open(self):
        from astropy.io import fits

        try:
            with _quiet_astropy():
                return fits.open(self.path, memmap=True, mode="readonly", lazy_load_hdus=False)
        except _FITS_ERRORS as err:
            raise self._error("not a readable FITS file", err) from None

    def _table(self, hdul):
        from astropy.io import fits

        try:
            with _quiet_astropy():
                hdu = hdul[self.hdu]
        except (IndexError, KeyError, OSError, ValueError) as err:
            raise self._error(f"no HDU {self.hdu} (the file may be truncated)", err) from None
        if not isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            raise self._error(f"HDU {self.hdu} is not a table", type(hdu).__name__)
        header = hdu.header
        # A file cut short: astropy may only warn, so compare the declared size with the file's.
        expected = hdu.fileinfo()["datLoc"] + header["NAXIS1"] * header["NAXIS2"] + header.get("PCOUNT", 0)
        size = os.path.getsize(self.path)
        if size < expected:
            raise self._error("truncated", f"the table needs {expected:,d} bytes, the file has {size:,d}")
        return hdu

    def describe(self) -> dict[str, SourceColumn]:
        with self._open() as hdul:
            hdu = self._table(hdul)
            try:
                empty = hdu.data[:0]
                out = {}
                for col in hdu.columns:
                    values = np.asarray(empty.field(col.name))
                    if values.dtype.kind == "O":
                        width, kind = -1, pa.float64()  # variable-length array: refused if used
                    else:
                        width = int(np.prod(values.shape[1:])) if values.ndim > 1 else None
                        kind = _arrow_type(values.dtype)
                    out[col.name] = SourceColumn(col.name, kind, width, col.unit or None)
                return out
            except _FITS_ERRORS as err:
                raise self._error("cannot read the table's columns", err) from None

    def batches(self, columns, types=None):
        with self._open() as hdul:
            hdu = self._table(hdul)
            nulls = {c.name: c.null for c in hdu.columns}
            n_rows = hdu.header["NAXIS2"]
            for lo in range(0, n_rows, self.chunk_rows):
                hi = min(lo + self.chunk_rows, n_rows)
                try:
                    chunk = hdu.data[lo:hi]
                    arrays = [_fits_to_arrow(chunk.field(name), nulls.get(name)) for name in columns]
                except IngestError as err:
                    raise self._error(f"rows {lo}..{hi - 1}", err) from None
                except _FITS_ERRORS as err:
                    raise self._error(f"cannot read rows {lo}..{hi - 1}", err) from None
                yield pa.RecordBatch.from_arrays(arrays, names=list(columns))


class CsvReader(CatalogReader):
    """A CSV file with a header line, streamed block by block (pyarrow.csv)."""

    format = "csv"

    def _reader(self, convert_options=None):
        from pyarrow import csv

        try:
            return csv.open_csv(self.path, read_options=csv.ReadOptions(block_size=1 << 22),
                                convert_options=convert_options)
        except (pa.ArrowException, OSError) as err:
            raise self._error("not a readable CSV file", err) from None

    def describe(self) -> dict[str, SourceColumn]:
        schema = self._reader().schema
        return {f.name: SourceColumn(f.name, f.type, None, None) for f in schema}

    def batches(self, columns, types=None):
        from pyarrow import csv

        hints = {c: t for c, t in (types or {}).items() if c in columns}
        reader = self._reader(csv.ConvertOptions(include_columns=list(columns), column_types=hints))
        row = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as err:
                raise self._error(f"cannot parse the rows after row {row}", err) from None
            for lo in range(0, batch.num_rows, self.chunk_rows):
                yield batch.slice(lo, self.chunk_rows)
            row += batch.num_rows


class ParquetReader(CatalogReader):
    """A Parquet file, streamed by row batches (pyarrow.parquet)."""

    format = "parquet"

    def _file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as err:
            raise self._error("not a readable Parquet file", err) from None

    def describe(self) -> dict[str, SourceColumn]:
        out = {}
        for field in self._file().schema_arrow:
            unit = (field.metadata or {}).get(b"unit")
            kind, width = field.type, None
            if pa.types.is_fixed_size_list(kind):
                kind, width = kind.value_type, kind.list_size
            elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
                kind, width = kind.value_type, -1
            out[field.name] = SourceColumn(field.name, kind, width, unit.decode() if unit else None)
        return out

    def batches(self, columns, types=None):
        row = 0
        try:
            for batch in self._file().iter_batches(batch_size=self.chunk_rows, columns=list(columns)):
                row += batch.num_rows
                yield batch
        except (pa.ArrowException, OSError) as err:
            raise self._error(f"cannot read the rows after row {row}", err) from None


@contextmanager
def _quiet_astropy():
    """Silence astropy's "File may have been truncated" warning: FitsReader checks the size itself."""
    from astropy.utils.exceptions import AstropyUserWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        yield


def detect_format(path: Path) -> str:
    """'fits', 'csv' or 'parquet' from a file name (a trailing .gz is looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise IngestError(f"{path}: cannot tell the format from the name; set ingest.format to one of {FORMATS}")
    return fmt


def make_reader(path: Path, fmt: str, chunk_rows: int, hdu: int = 1) -> CatalogReader:
    """The reader for a file: ``fmt`` is 'auto' (from the name) or one of FORMATS."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "fits":
        return FitsReader(path, chunk_rows, hdu)
    if fmt == "csv":
        return CsvReader(path, chunk_rows)
    if fmt == "parquet":
        return ParquetReader(path, chunk_rows)
    raise IngestError(f"ingest.format must be auto or one of {FORMATS}, got {fmt!r}")


def find_inputs(spec: str) -> list[Path]:
    """The files an ``ingest.input`` names: a file, a glob, or a folder (its catalog files, recursively),
    as absolute paths (a relative ``--input`` is the current directory's).

    Raises:
        IngestError: if nothing matches.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith((".", "_"))
                 and _known(p)]
        where = f"folder {path}"
    elif path.is_file():
        files, where = [path], str(path)
    else:
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        where = f"pattern {spec!r}"
    if not files:
        raise IngestError(f"ingest.input: no catalog files found for {where} "
                          f"(known extensions: {', '.join(sorted(_EXTENSIONS))}, optionally .gz)")
    return [p.absolute() for p in files]  # the tasks read them: Spark's workers have their own cwd


def _known(path: Path) -> bool:
    try:
        detect_format(path)
        return True
    except IngestError:
        return False


def _arrow_type(dtype: np.dtype) -> pa.DataType:
    if dtype.kind in "SU":
        return pa.string()
    return pa.from_numpy_dtype(dtype.newbyteorder("="))


def _fits_to_arrow(values, null=None) -> pa.Array:
    """One FITS column slice -> Arrow: native byte order, strings trimmed, arrays as fixed-size lists."""
    arr = np.asarray(values)
    if arr.dtype.kind == "O":
        raise IngestError("variable-length array columns are not supported")
    if arr.dtype.kind in "SU":
        if arr.ndim != 1:
            raise IngestError("string array columns are not supported")
        text = pa.array(arr).cast(pa.string()) if arr.dtype.kind == "S" else pa.array(arr.astype(str))
        return pc.utf8_rtrim_whitespace(text)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    mask = (arr == null) if null is not None and arr.dtype.kind in "iu" else None
    if arr.ndim == 1:
        return pa.array(arr, mask=mask)
    width = int(np.prod(arr.shape[1:]))
    flat = arr.reshape(len(arr), width)
    return pa.FixedSizeListArray.from_arrays(
        pa.array(flat.ravel(), mask=None if mask is None else mask.reshape(len(arr), width).ravel()), width)
