"""Bands, catalogs and band sets, loaded from ``conf/bands.yaml`` (the one place they live)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from photoz_spark import CONF_DIR
from photoz_spark.errors import InputError

BANDS_FILE = CONF_DIR / "bands.yaml"
ERR_KINDS = ("ivar", "sigma")


@dataclass(frozen=True)
class Band:
    """One photometric band and where its flux lives in its survey's native catalog."""

    name: str          # project-wide key, e.g. "sdss_u"
    survey: str        # galex, sdss, desi, wise, lsst
    band: str          # the survey's own band label, e.g. "u", "W1"
    filter: str        # speclite filter name
    lambda_eff: float  # Angstrom
    catalog: str       # native catalog holding the columns
    flux: str          # flux column
    err: str           # uncertainty column
    err_kind: str      # "ivar" (inverse variance) or "sigma" (1-sigma error)
    unit: str          # flux unit, a key of BandCatalog.units
    vega_to_ab: float = 0.0  # m_AB - m_Vega (WISE only)


@dataclass(frozen=True)
class Catalog:
    """A native catalog: its key column, coordinate columns and, for a spectroscopic one, its
    redshift and redshift-warning columns ("" where it has none)."""

    name: str
    id: str
    ra: str
    dec: str
    description: str = ""
    z: str = ""
    zwarning: str = ""


@dataclass(frozen=True)
class BandSet:
    """A named, wavelength-ordered tuple of bands: the steps of a feature sequence."""

    name: str
    bands: tuple[Band, ...]

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.bands]

    def __len__(self) -> int:
        return len(self.bands)


@dataclass(frozen=True)
class BandCatalog:
    """Everything in ``bands.yaml``: bands in sequence order, catalogs, band sets, units."""

    bands: dict[str, Band]
    catalogs: dict[str, Catalog]
    band_sets: dict[str, tuple[str, ...]]
    units: dict[str, float]  # unit name -> Jy
    # band -> speclite filter of its DESI Legacy Surveys DR9 North (BASS/MzLS) measurements
    north_filters: dict[str, str] = field(default_factory=dict)
    # catalog -> {ebv: column, kind: transmission|mag, columns: {band: column}}: Milky Way dust
    extinction: dict[str, dict] = field(default_factory=dict)

    def band(self, name: str) -> Band:
        if name not in self.bands:
            raise InputError(f"unknown band {name!r}; known bands: {', '.join(self.bands)}")
        return self.bands[name]

    def band_set(self, name_or_bands: str | list[str]) -> BandSet:
        """A named band set, or an ad-hoc list of band names, in sequence order.

        Args:
            name_or_bands: a band-set name from ``bands.yaml`` or a list of band names.
        Returns:
            The BandSet, its bands sorted into the wavelength order of ``bands.yaml``.
        """
        if isinstance(name_or_bands, str):
            if name_or_bands not in self.band_sets:
                raise InputError(
                    f"unknown band set {name_or_bands!r}; known band sets: {', '.join(self.band_sets)}"
                )
            name, members = name_or_bands, list(self.band_sets[name_or_bands])
        else:
            name, members = "custom", list(name_or_bands)
        bands = [self.band(m) for m in members]
        if len(set(members)) != len(members):
            raise InputError(f"band set {name!r} lists a band twice: {members}")
        position = {b: i for i, b in enumerate(self.bands)}
        return BandSet(name, tuple(sorted(bands, key=lambda b: position[b.name])))

    def catalog_bands(self, catalog: str) -> list[Band]:
        """The bands whose columns live in a native catalog, in sequence order."""
        if catalog not in self.catalogs:
            raise InputError(f"unknown catalog {catalog!r}; known catalogs: {', '.join(self.catalogs)}")
        return [b for b in self.bands.values() if b.catalog == catalog]

    def resolve_catalog(self, name: str, properties: dict | None = None) -> Catalog:
        """The ``catalogs:`` entry whose columns a catalog on disk has, whatever name it was written under.

        ``jobs/ingest_catalog.py`` records the survey map's catalog as ``photoz_catalog`` in the
        catalog's properties (and the crossmatch in its output's), so ``--name lsst_field2`` is
        still an ``lsst`` catalog. Without that property, the name itself, then the catalog's
        ``obs_collection``, must be a key of ``catalogs:``.

        Args:
            name: the catalog's folder name (``catalogs/<name>``).
            properties: its HATS ``properties`` (None or {} when there are none).
        Returns:
            The Catalog (id/ra/dec/z/zwarning column names), with ``name`` the entry's key.
        Raises:
            InputError: none of them names a known catalog.
        """
        properties = properties or {}
        for candidate in (properties.get("photoz_catalog"), name, properties.get("obs_collection")):
            if candidate in self.catalogs:
                return self.catalogs[candidate]
        raise InputError(f"catalog {name!r} is not under 'catalogs' of the bands file and records no known "
                         f"photoz_catalog in its properties (write it with jobs/ingest_catalog.py); "
                         f"known catalogs: {', '.join(self.catalogs)}")

    def bands_of(self, name: str, properties: dict | None = None) -> list[Band]:
        """The bands a catalog on disk holds, in sequence order.

        Those its properties record (``photoz_bands``, written by the ingest: the survey map's
        bands or ``ingest.bands``), else every band of its ``resolve_catalog`` entry.

        Raises:
            InputError: as ``resolve_catalog``.
        """
        catalog = self.resolve_catalog(name, properties)
        recorded = str((properties or {}).get("photoz_bands", "")).split()
        if recorded:  # the columns written, even of a band bands.yaml keeps elsewhere (DR16Q's SDSS PSF fluxes)
            return [b for b in self.bands.values() if b.name in recorded]
        return self.catalog_bands(catalog.name)

    def extinction_column(self, band: str) -> tuple[str, str] | None:
        """(column, kind) of a band's Milky Way correction in its native catalog, or None.

        ``kind`` is ``transmission`` (flux / T is the dereddened flux, as DESI LS
        ``MW_TRANSMISSION_*``) or ``mag`` (A in magnitudes, as SDSS ``extinction_*``).
        """
        spec = self.extinction.get(self.band(band).catalog, {})
        column = spec.get("columns", {}).get(band)
        return (column, spec["kind"]) if column else None

    def to_jy(self, unit: str) -> float:
        if unit not in self.units:
            raise InputError(f"unknown flux unit {unit!r}; known units: {', '.join(self.units)}")
        return self.units[unit]


def _parse(raw: dict) -> BandCatalog:
    units = {k: float(v) for k, v in raw["units"].items()}
    catalogs = {k: Catalog(name=k, **v) for k, v in raw["catalogs"].items()}
    bands = {}
    for name, spec in raw["bands"].items():
        band = Band(name=name, **spec)
        if band.err_kind not in ERR_KINDS:
            raise InputError(f"band {name}: err_kind {band.err_kind!r} must be one of {ERR_KINDS}")
        if band.catalog not in catalogs:
            raise InputError(f"band {name}: catalog {band.catalog!r} is not under 'catalogs'")
        if band.unit not in units:
            raise InputError(f"band {name}: unit {band.unit!r} is not under 'units'")
        bands[name] = band
    order = list(raw["order"])
    if sorted(order) != sorted(bands):
        missing = set(bands) ^ set(order)
        raise InputError(f"'order' must list every band exactly once; mismatched: {sorted(missing)}")
    ordered = {name: bands[name] for name in order}
    sets = {k: tuple(v) for k, v in raw["band_sets"].items()}
    north = dict(raw.get("north_filters", {}))
    extinction = {k: dict(v) for k, v in raw.get("extinction", {}).items()}
    for band in [*north, *(b for spec in extinction.values() for b in spec.get("columns", {}))]:
        if band not in bands:
            raise InputError(f"north_filters/extinction: unknown band {band!r}")
    for catalog, spec in extinction.items():
        if spec.get("kind") not in ("transmission", "mag"):
            raise InputError(f"extinction.{catalog}.kind must be 'transmission' or 'mag', got {spec.get('kind')!r}")
    registry = BandCatalog(bands=ordered, catalogs=catalogs, band_sets=sets, units=units,
                        north_filters=north, extinction=extinction)
    for name in sets:
        registry.band_set(name)  # validates membership
    return registry


# The old name, kept for modules not yet moved to BandCatalog (sim, ingest, crossmatch).
Registry = BandCatalog


@lru_cache(maxsize=4)
def load_bands(path: str | Path = BANDS_FILE) -> BandCatalog:
    """Load and validate a bands file (default ``conf/bands.yaml``)."""
    with open(path) as fh:
        return _parse(yaml.safe_load(fh))
