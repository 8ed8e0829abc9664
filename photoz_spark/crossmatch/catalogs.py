"""The crossmatch's input catalogs: where they are, which columns it needs, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from photoz_spark import hats
from photoz_spark.bands import Registry
from photoz_spark.errors import InputError


class CatalogError(InputError):
    """An input catalog that is missing or lacks a column the crossmatch needs."""


@dataclass(frozen=True)
class InputCatalog:
    """A catalog named in ``conf/bands.yaml`` and its HATS data under ``workdir/catalogs``."""

    name: str
    path: Path
    id: str
    ra: str
    dec: str
    band_columns: tuple[str, ...]  # each band's flux then err column, in sequence order
    schema: pa.Schema
    properties: dict
    kind: str = ""                 # its ``catalogs:`` entry in the bands file (``resolve_catalog``)
    bands: tuple[str, ...] = ()    # the bands whose columns it holds
    carried: tuple[str, ...] = ()  # other columns a right catalog adds to the output: Milky Way extinction

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    @property
    def order(self) -> int | None:
        value = self.properties.get("hats_order")
        return int(value) if value is not None else None


def open_catalog(name: str, path: Path, registry: Registry, *, with_bands: bool) -> InputCatalog:
    """Describe a catalog and check it has the columns the crossmatch reads, with usable types.

    The catalog may be written under any name: its columns are those of the bands file's
    catalog its properties record (``BandCatalog.resolve_catalog``), its bands those it holds
    (``BandCatalog.bands_of``).

    Args:
        name: the catalog's name: ``catalogs/<name>``.
        path: the HATS catalog folder.
        registry: the bands file's contents.
        with_bands: whether the catalog's band columns are needed (right catalogs); with them
            come the Milky Way extinction columns of its bands that it has (``extinction`` in
            the bands file: DESI LS ``EBV``, ``MW_TRANSMISSION_*``; SDSS ``extinction_*``).

    Returns:
        The InputCatalog.

    Raises:
        CatalogError: the catalog is missing or of an unknown kind, or a column is missing or of
            the wrong type.
    """
    try:
        properties = hats.read_properties(path)
        schema = hats.read_schema(path)
    except FileNotFoundError as err:
        raise CatalogError(f"catalog {name!r}: {err}; create it first (e.g. jobs/simulate_sky.py) "
                           "or point --workdir at the folder holding catalogs/") from None
    try:
        spec = registry.resolve_catalog(name, properties)
        bands = registry.bands_of(name, properties)
    except InputError as err:
        raise CatalogError(str(err)) from None
    columns = tuple(c for b in bands for c in (b.flux, b.err)) if with_bands else ()
    carried = tuple(c for c in extinction_columns(registry, [b.name for b in bands], spec.name)
                    if c in schema.names) if with_bands else ()
    catalog = InputCatalog(name=name, path=Path(path), id=spec.id, ra=spec.ra, dec=spec.dec,
                           band_columns=columns, schema=schema, properties=properties, kind=spec.name,
                           bands=tuple(b.name for b in bands if {b.flux, b.err} <= set(schema.names)),
                           carried=carried)
    _check_columns(catalog)
    # every pixel file's footer: one line naming a bad one. An empty catalog is an answer, not an
    # error: an empty left one gives an empty matched catalog, an empty right one NO_MATCH rows.
    hats.check_data_files(path, name, catalog.columns)
    return catalog


def extinction_columns(registry: Registry, bands: list[str], kind: str) -> list[str]:
    """The extinction columns of a catalog's bands, and its E(B-V) column, as the bands file names them."""
    found = [registry.extinction_column(b) for b in bands]
    ebv = registry.extinction.get(kind, {}).get("ebv")
    return list(dict.fromkeys([c for c, _ in filter(None, found)] + ([ebv] if ebv else [])))


def _check_columns(catalog: InputCatalog) -> None:
    checks = [(catalog.id, _is_id, "an integer or string id"),
              (catalog.ra, pa.types.is_floating, "floating point (degrees)"),
              (catalog.dec, pa.types.is_floating, "floating point (degrees)"),
              (hats.HEALPIX_COLUMN, pa.types.is_int64, "int64"),
              *((c, _is_number, "numeric") for c in (*catalog.band_columns, *catalog.carried))]
    for column, ok, wanted in checks:
        if column not in catalog.columns:
            raise CatalogError(f"catalog {catalog.name!r} ({catalog.path}) has no column {column!r}, "
                               f"which conf/bands.yaml names; columns: {', '.join(catalog.columns)}")
        kind = catalog.schema.field(column).type
        if not ok(kind):
            raise CatalogError(f"catalog {catalog.name!r}: column {column!r} must be {wanted}, got {kind}")


def _is_id(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)
