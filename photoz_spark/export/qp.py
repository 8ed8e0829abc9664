"""Score outputs as qp ensembles: ``to_qp`` in memory, ``export_qp`` as qp-readable files.

A score output (``scores/<name>``, written by ``jobs/score_catalog.py``) stores each object's
redshift PDF as a K-component Gaussian mixture in three list columns, ``mixmod_weights``,
``mixmod_means`` and ``mixmod_stds``: exactly the parameters of qp's ``mixmod``
parameterisation. This module turns them into a ``qp.Ensemble`` (one PDF per row, rows out ==
rows in, in the catalog's pixel order) with chosen columns (by default the object id, ra, dec,
``_healpix_29``, ``n_observed`` and ``flags``) as ancillary data, and writes ensembles as files
that ``qp.read`` / ``qp.is_qp_file`` open (HDF5, or qp's Parquet layout), the files RAIL stages
exchange.

What the exported ensemble is: **the PDF the score output's ``z_phot_*`` summarise**, for an
uncalibrated model (the network's mixture) and for one trained with ``train.recalibrate=true``
and ``train.recalibration=mixture`` (the default: scoring writes the recalibrated mixture into
the ``mixmod_*`` columns). Only a ``train.recalibration=pit_map`` model differs: its
``z_phot_*`` are those of the recalibrated PDF, which is not a mixture, while the ``mixmod_*``
columns -- and so the ensemble -- stay the raw network output; the map (the score output's
``photoz_calibration`` property) is not applied here. ``ScoreCatalog.calibrated`` and
``ScoreCatalog.calibration_method`` say which case a catalog is, ``export_qp`` records it in
``export.json`` and the job summary prints it.

Rows the model could not score (``NOT_SCORED``: no band observed) are kept with NaN mixture
parameters, so their PDFs evaluate to NaN; the ``flags`` ancillary column marks them. Pass
``scored_only=True`` to leave them out (counted): qp's ``mixmod.ppf`` over an ensemble spans
one grid over all its PDFs, so a NaN row turns every row's ``ppf``/``median`` into NaN.

Needs the ``astro`` extra (``pip install -e '.[astro]'``: qp-prob).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from photoz_spark import faults, hats
from photoz_spark.calibration_kind import from_properties, method_of
from photoz_spark.errors import InputError, MissingDependency, MissingInput
from photoz_spark.flags import FLAGS_COLUMN
from photoz_spark.staging import earlier_output, job_staging

# The score output's mixture columns, in qp mixmod's order (weights, means, stds); the same
# names as ``scoring.kernel.MIXTURE``, repeated here so that reading scores does not import torch.
MIXTURE_COLUMNS = {"weights": "mixmod_weights", "means": "mixmod_means", "stds": "mixmod_stds"}
FIRST_ESTIMATE = "z_phot_mean"  # score outputs hold the input's kept columns, then the estimates
FORMATS = {"hdf5": ".hdf5", "parquet": ".pq"}
MANIFEST_FILE = "export.json"
PARAMETERISATION = "mixmod"


def _qp():
    try:
        import qp
    except ImportError as err:
        raise MissingDependency("qp is not installed: pip install -e '.[astro]' (qp-prob)") from err
    return qp


@dataclass(frozen=True)
class ScoreCatalog:
    """A score output on disk: its pixels, schema and provenance (reads no data until asked)."""

    path: Path

    @classmethod
    def open(cls, path) -> ScoreCatalog:
        """Open a score output, checking that it is one.

        Args:
            path: the score output folder (``workdir/scores/<name>``).

        Returns:
            The ``ScoreCatalog``.

        Raises:
            FileNotFoundError: not a HATS catalog.
            ValueError: a HATS catalog without the mixture columns (not a score output).
        """
        catalog = cls(Path(path))
        try:
            names = catalog.schema.names
        except FileNotFoundError as err:
            raise MissingInput(str(err)) from err
        missing = [c for c in MIXTURE_COLUMNS.values() if c not in names]
        if missing:
            raise InputError(f"{catalog.path} is not a score output of jobs/score_catalog.py: it lacks "
                             f"{', '.join(missing)}")
        return catalog

    @cached_property
    def properties(self) -> dict[str, str]:
        return hats.read_properties(self.path)

    @cached_property
    def schema(self) -> pa.Schema:
        return hats.read_schema(self.path)

    @property
    def order(self) -> int:
        return int(self.properties["hats_order"])

    @cached_property
    def pixels(self) -> list[int]:
        """Npix of every data file, ascending."""
        lines = (self.path / hats.PARTITION_INFO_FILE).read_text().split()[1:]
        return sorted(int(line.split(",")[1]) for line in lines)

    @property
    def calibrated(self) -> bool:
        """True when the model carried a recalibration: the ``z_phot_*`` summaries are then those
        of the recalibrated PDF (and so are the mixture columns when ``calibration_method`` is mixture)."""
        return self.calibration_method != "none"

    @property
    def calibration_method(self) -> str:
        """none, mixture (the mixture columns are the recalibrated PDF) or pit_map (they stay the network's)."""
        return method_of(from_properties(self.properties))

    @property
    def ensemble_description(self) -> str:
        """What the exported ensemble is, in one line (export.json and the job summary)."""
        return {"none": "the network's mixture, as the score output's z_phot_* summarise it",
                "mixture": "the recalibrated mixture (the model's mixture recalibration), as the score output's "
                           "z_phot_* summarise it",
                "pit_map": "the network's mixture; the score output's z_phot_* are of the recalibrated PDF "
                           "(PIT map in properties photoz_calibration, not applied here)"}[self.calibration_method]

    @property
    def kept_columns(self) -> list[str]:
        """The input catalog's columns that scoring passed through (id, ra, dec, _healpix_29)."""
        names = self.schema.names
        return names[:names.index(FIRST_ESTIMATE)] if FIRST_ESTIMATE in names else []

    @property
    def default_ancillary(self) -> list[str]:
        """The id/coordinate columns, ``n_observed`` and ``flags``: what ``to_qp`` carries by default."""
        return [*self.kept_columns, *(c for c in ("n_observed", FLAGS_COLUMN) if c in self.schema.names)]

    def check_columns(self, columns: Sequence[str]) -> None:
        """Refuse ancillary columns the catalog lacks, or the mixture columns themselves."""
        missing = [c for c in columns if c not in self.schema.names]
        if missing:
            raise InputError(f"{self.path} has no column(s) {', '.join(missing)}; it has {', '.join(self.schema.names)}")
        mixture = [c for c in columns if c in MIXTURE_COLUMNS.values()]
        if mixture:
            raise InputError(f"{', '.join(mixture)} are the ensemble's parameters, not ancillary columns")

    def select_pixels(self, pixels: Sequence[int] | None) -> list[int]:
        """The pixels asked for (all when None or empty), in ascending order; unknown ones refused."""
        if not pixels:
            return self.pixels
        unknown = sorted({int(p) for p in pixels} - set(self.pixels))
        if unknown:
            shown = ", ".join(map(str, self.pixels[:20])) + (" ..." if len(self.pixels) > 20 else "")
            raise InputError(f"{self.path} has no pixel(s) {', '.join(map(str, unknown))} at order {self.order} "
                             f"(its pixels: {shown})")
        return sorted({int(p) for p in pixels})

    def read_pixel(self, npix: int, columns: Sequence[str], limit: int | None = None) -> pa.Table:
        """The mixture columns and ``columns`` of one pixel's file (its first ``limit`` rows)."""
        wanted = [*columns, *MIXTURE_COLUMNS.values()]
        path = self.path / hats.DATASET_DIR / hats.pixel_relpath(self.order, npix)
        if limit is None:
            return pq.read_table(path, columns=wanted, partitioning=None)
        batches, rows = [], 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=max(min(limit, 65_536), 1), columns=wanted):
            batches.append(batch.slice(0, limit - rows))
            rows += batches[-1].num_rows
            if rows >= limit:
                break
        return pa.Table.from_batches(batches, schema=pq.read_schema(path).empty_table().select(wanted).schema)


def mixture_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """qp mixmod's ``weights``, ``means``, ``stds`` as [N, K] float32 arrays from the list columns.

    Raises:
        ValueError: rows whose lists are not all K long (a corrupt or hand-edited score output).
    """
    arrays = {}
    for key, column in MIXTURE_COLUMNS.items():
        values = table.column(column).combine_chunks()
        if pa.types.is_fixed_size_list(values.type):  # score outputs since #17: K in the schema
            lengths, k = np.full(len(values), values.type.list_size), values.type.list_size
        else:  # older outputs: variable-size lists, K read from the offsets
            lengths = np.diff(values.offsets.to_numpy()) if len(values) else np.zeros(0, np.int64)
            k = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != k).any() or values.null_count:
            raise InputError(f"{column}: every row must hold a list of the same length K (the model's components)")
        flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        arrays[key] = flat.reshape(len(values), k)
    ks = {a.shape[1] for a in arrays.values()}
    if len(ks) > 1 and len(table):
        raise InputError(f"the mixture columns disagree on K: {sorted(ks)}")
    return arrays


def drop_unscored(table: pa.Table) -> pa.Table:
    """The rows the model scored (finite mixture weights), i.e. without the NOT_SCORED ones."""
    first_weight = pc.list_element(table.column(MIXTURE_COLUMNS["weights"]), 0) if table.num_rows else None
    return table if first_weight is None else table.filter(pc.is_finite(first_weight))


def ensemble_from_table(table: pa.Table, ancillary: Sequence[str] = ()):
    """A qp ``mixmod`` Ensemble from score-output rows.

    Args:
        table: rows with the three ``mixmod_*`` list columns.
        ancillary: columns of ``table`` stored as the ensemble's ancillary data.

    Returns:
        ``qp.Ensemble`` with one PDF per row, in ``table``'s order.
    """
    qp = _qp()
    with warnings.catch_warnings():  # NOT_SCORED rows: NaN parameters on purpose (flags say so)
        warnings.filterwarnings("ignore", message=".*non-finite values", category=RuntimeWarning)
        ensemble = qp.Ensemble(qp.mixmod, data=mixture_arrays(table))
    if ancillary:
        ensemble.set_ancil({c: ancillary_array(table.column(c), c) for c in ancillary})
    return ensemble


def ancillary_array(column: pa.ChunkedArray, name: str = "") -> np.ndarray:
    """A column as the numpy array qp writes: numbers and booleans as they are, strings as
    fixed-width unicode (qp's HDF5 writer silently leaves out object arrays).

    Raises:
        ValueError: a column of another type (lists, structs): qp ancillary data are flat arrays.
    """
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.fill_null(column, "").to_numpy(zero_copy_only=False).astype(str)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise InputError(f"column {name!r} ({kind}) cannot be qp ancillary data: numbers, booleans or strings only")
    return column.to_numpy(zero_copy_only=False)


def read_selection(catalog: ScoreCatalog, pixels: Sequence[int] | None = None, columns: Sequence[str] | None = None,
                   limit: int | None = None, scored_only: bool = False) -> pa.Table:
    """The rows of the selected pixels (the first ``limit`` read, in pixel order; without the
    NOT_SCORED ones if ``scored_only``) with the mixture and ``columns``."""
    columns = catalog.default_ancillary if columns is None else list(columns)
    catalog.check_columns(columns)
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    parts, rows = [], 0
    for npix in catalog.select_pixels(pixels):
        if limit is not None and rows >= limit:
            break
        parts.append(catalog.read_pixel(npix, columns, None if limit is None else limit - rows))
        rows += parts[-1].num_rows
    table = pa.concat_tables(parts) if parts else catalog.schema.empty_table().select([*columns, *MIXTURE_COLUMNS.values()])
    return drop_unscored(table) if scored_only else table


def to_qp(scores_dir, pixels: Sequence[int] | None = None, columns: Sequence[str] | None = None,
          limit: int | None = None, scored_only: bool = False):
    """The redshift PDFs of a score output as one ``qp.Ensemble`` (``mixmod``), no glue needed.

    The ensemble is the score output's Gaussian mixture: the PDF its ``z_phot_*`` summarise,
    except for a ``pit_map``-recalibrated model (``ScoreCatalog(path).calibration_method``),
    whose mixture stays the network's; see the module docstring. NOT_SCORED rows are kept with NaN parameters unless
    ``scored_only``: qp 1.1's ``mixmod.ppf`` (so ``median``, ``interval``) builds one grid from
    the whole ensemble's means and stds, so one NaN row makes every row's ppf NaN.

    Args:
        scores_dir: a score output folder (``workdir/scores/<name>``).
        pixels: HEALPix pixels (Npix at the catalog's ``hats_order``) to read; None: all.
        columns: ancillary columns; None: the id, ra, dec and ``_healpix_29`` columns,
            ``n_observed`` and ``flags``; any score column may be named (e.g. ``z_phot_mean``).
        limit: at most this many rows (the first ones in pixel order); None: all.
        scored_only: leave out the NOT_SCORED rows (no band observed, NaN mixture).

    Returns:
        ``qp.Ensemble`` of ``qp.mixmod`` with ``columns`` as ancillary data, one PDF per row.

    Raises:
        FileNotFoundError: ``scores_dir`` is not a HATS catalog.
        ValueError: not a score output, unknown column or pixel, negative limit.
    """
    catalog = ScoreCatalog.open(scores_dir)
    columns = catalog.default_ancillary if columns is None else list(columns)
    return ensemble_from_table(read_selection(catalog, pixels, columns, limit, scored_only), columns)


def _file_name(stem: str, fmt: str) -> str:
    return stem + FORMATS[fmt]


def export_qp(scores_dir, output_dir, pixels: Sequence[int] | None = None, columns: Sequence[str] | None = None,
              limit: int | None = None, single_file: bool = False, fmt: str = "hdf5",
              scored_only: bool = False, root=None) -> dict:
    """Write a score output's PDFs as qp files: one per pixel, or one for the whole selection.

    Per pixel the file is ``<output_dir>/Norder=k/Dir=d/Npix=n.hdf5`` (the HATS path of the
    pixel's score file, with qp's suffix); with ``single_file`` it is ``<output_dir>/<name>.hdf5``
    (``name`` = the output folder's name). ``fmt="parquet"`` writes qp's Parquet layout instead:
    for a file ``X.pq`` qp writes ``Xmeta.pq``, ``Xdata.pq`` and ``Xancil.pq``; open it as
    ``qp.read("X.pq")``. ``export.json`` lists the files, their rows, the source catalog, the
    model and whether the ensemble differs from the recalibrated summaries.

    Everything is written to a hidden staging folder and moved into place at the end by one
    journaled commit (``staging.job_staging``): a rerun replaces the earlier export, a failed or
    killed run leaves it untouched, a kill during the commit is finished or rolled back by the next
    job's start (``commit.recover`` of ``root``). A folder that is not an earlier export is never replaced.

    Args:
        scores_dir: a score output folder (``workdir/scores/<name>``).
        output_dir: the export folder to create or replace.
        pixels, columns, limit, scored_only: the selection, as in ``to_qp``.
        single_file: one file for the selection instead of one per pixel.
        fmt: ``hdf5`` or ``parquet``.
        root: the work directory (holds the staging folder and the commit's journal); default
            the folder holding ``output_dir``.

    Returns:
        Summary dict: input, output, files (relative path -> rows), rows, unscored_dropped,
        pixels, order, limit, columns, calibrated, calibration_method, ensemble (what it is), model, format, single_file,
        seconds.
    """
    t0 = time.time()
    require_format(fmt)
    catalog = ScoreCatalog.open(scores_dir)
    columns = catalog.default_ancillary if columns is None else list(columns)
    catalog.check_columns(columns)
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    selected = catalog.select_pixels(pixels)
    target = Path(output_dir).absolute()
    with job_staging(Path(root) if root is not None else target.parent, "export_qp") as stage:
        staged = stage.output(target.name, target, check=earlier_output(MANIFEST_FILE, "qp export"))
        staged.mkdir(parents=True)
        files, dropped = (_write_single if single_file else _write_per_pixel)(
            catalog, staged, target.name, selected, columns, limit, fmt, scored_only)
        summary = {
            "input": str(catalog.path.absolute()), "output": str(target), "format": fmt, "single_file": single_file,
            "parameterisation": PARAMETERISATION, "files": files, "rows": sum(files.values()), "unscored_dropped": dropped,
            "pixels": selected, "order": catalog.order, "limit": limit, "columns": columns,
            "calibrated": catalog.calibrated, "calibration_method": catalog.calibration_method,
            "ensemble": catalog.ensemble_description,
            "model": {k: catalog.properties.get(f"photoz_model_{k}", "") for k in ("name", "version", "uri")},
        }
        (staged / MANIFEST_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        stage.commit()
    summary["seconds"] = time.time() - t0
    return summary


def require_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _write(ensemble, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ensemble.write_to(str(path))
    faults.point("export.file")  # tests: killed with some files written, the export not committed


def _write_per_pixel(catalog: ScoreCatalog, staged: Path, name: str, pixels: list[int], columns: list[str],
                     limit: int | None, fmt: str, scored_only: bool) -> tuple[dict[str, int], int]:
    """One file per pixel (one pixel in memory at a time) until ``limit`` rows are read."""
    files, rows, dropped = {}, 0, 0
    for npix in pixels:
        if limit is not None and rows >= limit:
            break
        table = catalog.read_pixel(npix, columns, None if limit is None else limit - rows)
        rows += table.num_rows
        kept = drop_unscored(table) if scored_only else table
        dropped += table.num_rows - kept.num_rows
        relpath = hats.pixel_relpath(catalog.order, npix).removesuffix(".parquet") + FORMATS[fmt]
        _write(ensemble_from_table(kept, columns), staged / relpath)
        files[relpath] = kept.num_rows
    return files, dropped


def _write_single(catalog: ScoreCatalog, staged: Path, name: str, pixels: list[int], columns: list[str],
                  limit: int | None, fmt: str, scored_only: bool) -> tuple[dict[str, int], int]:
    table = read_selection(catalog, pixels, columns, limit)
    kept = drop_unscored(table) if scored_only else table
    relpath = _file_name(name, fmt)
    _write(ensemble_from_table(kept, columns), staged / relpath)
    return {relpath: kept.num_rows}, table.num_rows - kept.num_rows
