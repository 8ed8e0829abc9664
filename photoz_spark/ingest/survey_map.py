"""A survey product's column map (``conf/surveys/<name>.yaml``), loaded and checked.

A map says how one product (DR16Q, LS DR9 sweeps, DP1 Object, ...) becomes one of the
pipeline's native catalogs (a ``catalogs:`` entry of ``conf/bands.yaml``):

* ``columns``: output column -> product column (``from``, default the same name), its type
  (``int``, ``float``, ``string``), optionally its unit (checked against the file's), a valid
  ``range`` (rows outside are counted, not changed), ``optional: true`` (skipped when absent)
  or ``compute: ls_id`` with ``inputs`` (a derived column).
* ``bands``: a ``bands.yaml`` band -> the product's flux and error columns (``PSFFLUX[0]`` is
  element 0 of an array column), the product's error kind (``ivar``/``sigma``), flux unit and
  magnitude system (``ab``, or ``vega`` for unWISE: converted with the band's ``vega_to_ab``).
  The output column names, error kind and unit are the band's own in ``bands.yaml``.
* ``null_values``: product values that mean "not measured" (GALEX's -999): they become nulls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from photoz_spark import CONF_DIR
from photoz_spark.bands import Band, Catalog, Registry
from photoz_spark.ingest import IngestError

SURVEYS_DIR = CONF_DIR / "surveys"
COLUMN_TYPES = ("int", "float", "string")
ERR_KINDS = ("ivar", "sigma")
SYSTEMS = ("ab", "vega")
COMPUTED = {"ls_id": ("RELEASE", "BRICKID", "OBJID")}  # name -> the inputs it needs, in order

# Flux units a product may be in: spellings -> canonical name. Canonical names that are units of
# bands.yaml take their value in Jy from there; the others are plain SI multiples of a jansky.
_UNIT_ALIASES = {
    "nanomaggy": "nanomaggy", "nanomaggies": "nanomaggy", "nmgy": "nanomaggy", "nanomaggie": "nanomaggy",
    "njy": "nJy", "nanojy": "nJy", "nanojansky": "nJy",
    "ujy": "uJy", "µjy": "uJy", "μjy": "uJy", "microjy": "uJy", "micro-jy": "uJy", "microjansky": "uJy",
    "mjy": "mJy", "millijy": "mJy", "jy": "Jy", "jansky": "Jy",
}
_SI_JY = {"uJy": 1e-6, "mJy": 1e-3, "Jy": 1.0}
_ELEMENT = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[\s*(\d+)\s*\])?\s*$")


def canonical_unit(unit: str | None) -> str | None:
    """The canonical flux unit of a spelling ('nanomaggies' -> 'nanomaggy'), None if unknown."""
    if unit is None:
        return None
    return _UNIT_ALIASES.get(unit.strip().replace(" ", "").lower())


def is_magnitude_unit(unit: str | None) -> bool:
    """True for 'mag', 'ABmag', 'mag(AB)'... but not for (nano)maggies."""
    text = (unit or "").strip().lower()
    return "mag" in text and "magg" not in text and "mgy" not in text


def unit_in_jy(unit: str, registry: Registry) -> float:
    """The value in Jy of a canonical flux unit."""
    if unit in registry.units:
        return registry.to_jy(unit)
    return _SI_JY[unit]


@dataclass(frozen=True)
class SourceRef:
    """A product column, or one element of an array column (``PSFFLUX[2]``)."""

    column: str
    index: int | None = None

    @classmethod
    def parse(cls, text: str, where: str) -> SourceRef:
        match = _ELEMENT.match(str(text))
        if not match:
            raise IngestError(f"{where}: {text!r} is not a column name or NAME[index]")
        return cls(match.group(1), None if match.group(2) is None else int(match.group(2)))

    def __str__(self) -> str:
        return self.column if self.index is None else f"{self.column}[{self.index}]"


@dataclass(frozen=True)
class ColumnSpec:
    """One output column that is not a band: copied (``source``) or computed (``compute``)."""

    name: str
    type: str
    source: SourceRef | None
    unit: str | None = None
    range: tuple[float, float] | None = None
    optional: bool = False
    compute: str | None = None
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class BandSpec:
    """Where a band's flux and error are in the product, and how to convert them."""

    band: Band               # the bands.yaml band: output column names, error kind and unit
    flux: SourceRef
    err: SourceRef
    err_kind: str            # the product's
    unit: str                # the product's flux unit, canonical
    system: str = "ab"

    def flux_factor(self, registry: Registry) -> float:
        """Multiply a product flux by this to get the band's bands.yaml unit (AB)."""
        factor = unit_in_jy(self.unit, registry) / registry.to_jy(self.band.unit)
        if self.system == "vega":  # m_AB = m_Vega + vega_to_ab: AB fluxes are smaller
            factor *= 10.0 ** (-0.4 * self.band.vega_to_ab)
        return factor


@dataclass(frozen=True)
class SurveyMap:
    """A loaded, checked survey map."""

    name: str
    path: Path
    product: str
    catalog: Catalog
    columns: tuple[ColumnSpec, ...]
    bands: tuple[BandSpec, ...]
    null_values: tuple[float, ...] = ()

    @property
    def output_columns(self) -> list[str]:
        """The written columns, before ``flags`` and ``_healpix_29``."""
        return [c.name for c in self.columns] + [n for b in self.bands for n in (b.band.flux, b.band.err)]

    def source_columns(self) -> list[str]:
        """Every product column the map reads, each once, in map order."""
        names: list[str] = []
        refs = [c.source.column for c in self.columns if c.source] + [i for c in self.columns for i in c.inputs]
        refs += [r.column for b in self.bands for r in (b.flux, b.err)]
        for name in refs:
            if name not in names:
                names.append(name)
        return names

    def renamed(self, columns: dict) -> SurveyMap:
        """The same map reading some product columns under other names (``ingest.columns``).

        Args:
            columns: {a column the map reads: the name it has in the user's file}, e.g.
                ``{"z": "Z_SPEC"}``; array elements keep their index (``PSFFLUX[0]`` -> ``NAME[0]``).
        Returns:
            The renamed map (output names are unchanged).
        Raises:
            IngestError: a key the map does not read, or a value that is not a column name.
        """
        if not columns:
            return self
        reads = self.source_columns()
        unknown = [str(k) for k in columns if k not in reads]
        if unknown:
            raise IngestError(f"ingest.columns: {unknown} not read by survey map {self.name!r}, which reads: "
                              f"{', '.join(reads)}")
        for old, new in columns.items():
            if not isinstance(new, str) or not _ELEMENT.fullmatch(new) or "[" in new:
                raise IngestError(f"ingest.columns.{old}: {new!r} is not a column name")

        def ref(r: SourceRef | None) -> SourceRef | None:
            return None if r is None else SourceRef(columns.get(r.column, r.column), r.index)

        cols = tuple(replace(c, source=ref(c.source), inputs=tuple(columns.get(i, i) for i in c.inputs))
                     for c in self.columns)
        bands = tuple(replace(b, flux=ref(b.flux), err=ref(b.err)) for b in self.bands)
        return replace(self, columns=cols, bands=bands)

    def with_bands(self, names: list[str]) -> SurveyMap:
        """The same map restricted to some of its bands (``ingest.bands``)."""
        have = [b.band.name for b in self.bands]
        unknown = [n for n in names if n not in have]
        if unknown:
            raise IngestError(f"ingest.bands: {unknown} not in survey map {self.name!r}, which has: {', '.join(have)}")
        return SurveyMap(self.name, self.path, self.product, self.catalog, self.columns,
                         tuple(b for b in self.bands if b.band.name in names), self.null_values)


def map_path(survey: str) -> Path:
    """``conf/surveys/<survey>.yaml`` for a name, or the path itself for a file."""
    if survey.endswith((".yaml", ".yml")) or "/" in survey:
        return Path(survey)
    return SURVEYS_DIR / f"{survey}.yaml"


def available_maps() -> list[str]:
    return sorted(p.stem for p in SURVEYS_DIR.glob("*.yaml"))


def load_survey_map(survey: str, registry: Registry) -> SurveyMap:
    """Load and check a survey map.

    Args:
        survey: a map name of ``conf/surveys/`` (e.g. "sdss_dr16q") or a path to a YAML map.
        registry: the bands file's contents (catalogs, bands, units).

    Returns:
        The SurveyMap.

    Raises:
        IngestError: an unknown map, catalog or band, or a malformed entry (the message names it).
    """
    path = map_path(survey)
    if not path.is_file():
        raise IngestError(f"survey map {survey!r} not found ({path}); available: {', '.join(available_maps())}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise IngestError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    where = str(path)
    if not isinstance(raw, dict):
        raise IngestError(f"{where}: top level must be a mapping")
    unknown = set(raw) - {"product", "reference", "catalog", "columns", "bands", "null_values"}
    if unknown:
        raise IngestError(f"{where}: unknown key(s) {sorted(unknown)}")
    catalog_name = raw.get("catalog")
    if catalog_name not in registry.catalogs:
        raise IngestError(f"{where}: catalog {catalog_name!r} is not under 'catalogs:' in the bands file; "
                          f"known: {', '.join(registry.catalogs)}")
    catalog = registry.catalogs[catalog_name]
    columns = tuple(_column(name, spec or {}, where) for name, spec in (raw.get("columns") or {}).items())
    bands = tuple(_band(name, spec or {}, where, registry) for name, spec in (raw.get("bands") or {}).items())
    smap = SurveyMap(name=path.stem, path=path, product=str(raw.get("product", path.stem)), catalog=catalog,
                     columns=columns, bands=bands,
                     null_values=tuple(float(v) for v in raw.get("null_values") or ()))
    _check_catalog_columns(smap, where)
    return smap


def _column(name: str, spec: dict, where: str) -> ColumnSpec:
    where = f"{where}: column {name}"
    unknown = set(spec) - {"from", "type", "unit", "range", "optional", "compute", "inputs"}
    if unknown:
        raise IngestError(f"{where}: unknown key(s) {sorted(unknown)}")
    kind = spec.get("type")
    if kind not in COLUMN_TYPES:
        raise IngestError(f"{where}: type must be one of {COLUMN_TYPES}, got {kind!r}")
    rng = spec.get("range")
    if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and rng[0] <= rng[1]):
        raise IngestError(f"{where}: range must be [low, high], got {rng!r}")
    compute = spec.get("compute")
    if compute is not None:
        if compute not in COMPUTED:
            raise IngestError(f"{where}: compute must be one of {sorted(COMPUTED)}, got {compute!r}")
        inputs = tuple(spec.get("inputs") or COMPUTED[compute])
        if len(inputs) != len(COMPUTED[compute]):
            raise IngestError(f"{where}: compute {compute} needs inputs like {list(COMPUTED[compute])}")
        return ColumnSpec(name, kind, None, compute=compute, inputs=inputs, optional=bool(spec.get("optional")))
    return ColumnSpec(name, kind, SourceRef.parse(spec.get("from", name), where), unit=spec.get("unit"),
                      range=tuple(float(v) for v in rng) if rng else None, optional=bool(spec.get("optional")))


def _band(name: str, spec: dict, where: str, registry: Registry) -> BandSpec:
    if name not in registry.bands:
        raise IngestError(f"{where}: band {name!r} is not in the bands file; known: {', '.join(registry.bands)}")
    where = f"{where}: band {name}"
    unknown = set(spec) - {"flux", "err", "err_kind", "unit", "system"}
    missing = {"flux", "err", "err_kind", "unit"} - set(spec)
    if unknown or missing:
        raise IngestError(f"{where}: unknown key(s) {sorted(unknown)}, missing key(s) {sorted(missing)}")
    if spec["err_kind"] not in ERR_KINDS:
        raise IngestError(f"{where}: err_kind must be one of {ERR_KINDS}, got {spec['err_kind']!r}")
    unit = canonical_unit(spec["unit"])
    if unit is None:
        raise IngestError(f"{where}: unknown flux unit {spec['unit']!r}; known: {', '.join(sorted(set(_UNIT_ALIASES.values())))}")
    system = spec.get("system", "ab")
    band = registry.band(name)
    if system not in SYSTEMS:
        raise IngestError(f"{where}: system must be one of {SYSTEMS}, got {system!r}")
    if system == "vega" and not band.vega_to_ab:
        raise IngestError(f"{where}: system vega needs the band's vega_to_ab in the bands file")
    return BandSpec(band=band, flux=SourceRef.parse(spec["flux"], where), err=SourceRef.parse(spec["err"], where),
                    err_kind=spec["err_kind"], unit=unit, system=system)


def _check_catalog_columns(smap: SurveyMap, where: str) -> None:
    """The catalog's id/ra/dec must be written (coordinates as floats), and no name twice."""
    by_name = {c.name: c for c in smap.columns}
    cat = smap.catalog
    for role, column, types in (("id", cat.id, ("int", "string")), ("ra", cat.ra, ("float",)),
                                ("dec", cat.dec, ("float",))):
        spec = by_name.get(column)
        if spec is None or spec.optional or spec.type not in types:
            raise IngestError(f"{where}: catalog {cat.name!r} needs its {role} column {column!r} "
                              f"(type {' or '.join(types)}, not optional) under columns:")
    names = smap.output_columns
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise IngestError(f"{where}: output column(s) {twice} written twice")
