"""Spark orchestration of the crossmatch: left catalog x right catalogs -> ``matched/<run>`` (HATS).

Every check (settings, catalogs, columns, output names) runs before Spark does any work. The
left catalog gets an internal row key so rows with equal ids stay apart; each right catalog is
matched independently by a ``CrossmatchAlgorithm``; the matches are left-joined back, so every
left row is kept (exactly one output row per left row when k = 1). A left row with bad
coordinates is kept unmatched and flagged BAD_COORDS and NO_MATCH.

With k > 1 a left row gets one output row per rank r = 1..max over right catalogs of
min(k, candidates), i.e. max(1, matches) rows: row r holds each right catalog's r-th nearest
counterpart (``C_rank`` = r), or nulls where that catalog has fewer; ``C_n_candidates`` and
``flags`` repeat on every row of the left row.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from photoz_spark import hats
from photoz_spark.bands import Registry
from photoz_spark.config import require
from photoz_spark.crossmatch.algorithm import (
    DEC,
    N_CANDIDATES,
    RA,
    RANK,
    RIGHT_ID,
    ROW,
    SEP,
    CrossmatchAlgorithm,
    HealpixNeighbourMatch,
)
from photoz_spark.crossmatch.catalogs import CatalogError, InputCatalog, open_catalog
from photoz_spark.flags import FLAGS_COLUMN, Flag, count_flags
from photoz_spark.staging import job_staging

RESERVED_PREFIX = "_xm_"
_OK, _DUP = "_xm_ok", "_xm_dup"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class CrossmatchPlan:
    """Everything the crossmatch will do, fixed and checked before any work."""

    run: str
    left: InputCatalog
    right: tuple[InputCatalog, ...]
    algorithm: CrossmatchAlgorithm
    output_order: int
    target: Path
    columns: tuple[str, ...]  # output columns, in order

    def properties(self) -> dict:
        """Provenance for the output's ``properties`` file (``photoz_crossmatch_*`` keys)."""
        props = {"left": self.left.name, "right": [c.name for c in self.right], **self.algorithm.properties()}
        return {f"photoz_crossmatch_{key}": value for key, value in props.items()}


def match_columns(name: str, k: int) -> dict[str, str]:
    """Output names of a right catalog's match columns: internal name -> ``<catalog>_<what>``."""
    columns = {RIGHT_ID: f"{name}_id", SEP: f"{name}_sep_arcsec", N_CANDIDATES: f"{name}_n_candidates"}
    if k > 1:
        columns[RANK] = f"{name}_rank"
    return columns


# --- validation ------------------------------------------------------------------------------

def make_algorithm(xm: dict) -> CrossmatchAlgorithm:
    """The algorithm the settings ask for, validated (ValueError saying what to change)."""
    join_order = str(xm["join_order"]).strip()
    require(join_order == "auto" or join_order.isdigit(),
            f"crossmatch.join_order must be auto or a HEALPix order 0..{hats.HEALPIX_ORDER}, got {xm['join_order']!r}")
    algorithm = HealpixNeighbourMatch(xm["radius_arcsec"], xm["k"],
                                      None if join_order == "auto" else int(join_order))
    algorithm.validate()
    return algorithm


def validate(xm: dict, registry: Registry) -> CrossmatchAlgorithm:
    """Refuse settings that cannot work, before touching any file.

    Args:
        xm: the ``crossmatch`` section of the configuration (conf/crossmatch.yaml).
        registry: the bands file's contents.

    Returns:
        The validated algorithm.
    """
    allowed = ", ".join(registry.catalogs)
    require(bool(_RUN_NAME.fullmatch(str(xm["run"]))),
            f"crossmatch.run must be a folder name (letters, digits, _ . -), got {xm['run']!r}")
    require(xm["left"] in registry.catalogs, f"crossmatch.left: unknown catalog {xm['left']!r}; allowed: {allowed}")
    right = xm["right"]
    require(isinstance(right, list) and len(right) > 0, f"crossmatch.right must list at least one catalog of: {allowed}")
    unknown = [c for c in right if c not in registry.catalogs]
    require(not unknown, f"crossmatch.right: unknown catalog(s) {unknown}; allowed: {allowed}")
    require(len(set(right)) == len(right), f"crossmatch.right lists a catalog twice: {right}")
    require(xm["left"] not in right, f"crossmatch.right must not include the left catalog {xm['left']!r}")
    order = xm["output_order"]
    require(order is None or (isinstance(order, int) and not isinstance(order, bool)
                              and 0 <= order <= hats.HEALPIX_ORDER),
            f"crossmatch.output_order must be empty (the left catalog's order) or 0..{hats.HEALPIX_ORDER}, got {order!r}")
    return make_algorithm(xm)


def make_plan(xm: dict, registry: Registry, workdir) -> CrossmatchPlan:
    """Validate the settings and the catalogs, and fix the output schema.

    Args:
        xm: the ``crossmatch`` section of the configuration.
        registry: the bands file's contents.
        workdir: a ``cli.Workdir``; catalogs are read from ``catalogs/<name>``.

    Returns:
        The plan.

    Raises:
        ConfigError: a bad setting.
        CatalogError: a missing catalog, column, wrong type or an output name collision.
    """
    algorithm = validate(xm, registry)
    left = open_catalog(xm["left"], workdir.catalog(xm["left"]), registry, with_bands=False)
    right = tuple(open_catalog(c, workdir.catalog(c), registry, with_bands=True) for c in xm["right"])
    order = xm["output_order"] if xm["output_order"] is not None else left.order
    if order is None:
        raise CatalogError(f"catalog {left.name!r} has no hats_order in its properties; set crossmatch.output_order")
    columns = output_columns(left, right, algorithm.k)
    return CrossmatchPlan(run=xm["run"], left=left, right=right, algorithm=algorithm, output_order=order,
                          target=Path(workdir.matched) / xm["run"], columns=tuple(columns))


def output_columns(left: InputCatalog, right: tuple[InputCatalog, ...], k: int) -> list[str]:
    """All left columns, then each right catalog's match and band columns, then ``flags``.

    Raises:
        CatalogError: if two sources would give the output the same column name.
    """
    owner = {c: f"the left catalog {left.name!r}" for c in left.columns}
    owner.setdefault(FLAGS_COLUMN, "the flags column")  # a left ``flags`` is kept and ORed into
    for catalog in (left, *right):
        reserved = [c for c in catalog.columns if c.startswith(RESERVED_PREFIX)]
        if reserved:
            raise CatalogError(f"catalog {catalog.name!r} has column(s) {reserved}: the prefix "
                               f"{RESERVED_PREFIX!r} is reserved for the crossmatch; rename them")
    columns = list(left.columns)
    for catalog in right:
        for column in [*match_columns(catalog.name, k).values(), *catalog.band_columns]:
            if column in owner:
                raise CatalogError(f"output column {column!r} from right catalog {catalog.name!r} would collide "
                                   f"with {owner[column]}; rename one of them")
            owner[column] = f"right catalog {catalog.name!r}"
            columns.append(column)
    if FLAGS_COLUMN not in left.columns:
        columns.append(FLAGS_COLUMN)
    return columns


# --- the Spark stage -------------------------------------------------------------------------

def crossmatch(spark, plan: CrossmatchPlan, workdir) -> dict:
    """Run a validated plan and write ``matched/<run>``.

    Args:
        spark: the SparkSession.
        plan: from ``make_plan``.
        workdir: the ``cli.Workdir`` (its root holds the job's staging folder).

    Returns:
        Summary: rows in/out, per right catalog matched/unmatched/ambiguous counts and match
        rate, flagged rows by reason, seconds, rows/s and the output path.
    """
    t0 = time.time()
    left = _read_left(spark, plan.left).persist()
    try:
        rows_in = left.count()
        matches = {c.name: _match_one(spark, plan, left, c) for c in plan.right}
        out = _assemble(plan, left, matches)
        with job_staging(workdir.root, "crossmatch") as stage:
            written = hats.write_hats(out, stage.output(plan.run, plan.target), order=plan.output_order,
                                      ra_col=plan.left.ra, dec_col=plan.left.dec, catalog_name=plan.run,
                                      extra_properties=plan.properties())
            stage.commit()
    finally:
        left.unpersist()
    summary = _summarise(spark, plan, rows_in, written["n_rows"])
    seconds = time.time() - t0
    summary.update(seconds=seconds, rows_per_s=rows_in / seconds if seconds > 0 else 0.0)
    return summary


def _read_left(spark, catalog: InputCatalog):
    """Left rows plus a unique row key and whether their coordinates are usable."""
    from pyspark.sql import functions as F

    ra, dec = F.col(catalog.ra), F.col(catalog.dec)
    ok = (ra.isNotNull() & dec.isNotNull() & ~F.isnan(ra) & ~F.isnan(dec)
          & (ra >= 0.0) & (ra < 360.0) & (dec >= -90.0) & (dec <= 90.0))
    # Ids may repeat; this key never does. Taken straight off the file scan (deterministic) and
    # cached, so every branch of the plan sees the same keys.
    return (hats.read_hats(spark, catalog.path)
            .withColumn(ROW, F.monotonically_increasing_id())
            .withColumn(_OK, F.coalesce(ok, F.lit(False))))


def _match_one(spark, plan: CrossmatchPlan, left, catalog: InputCatalog):
    """One right catalog's ranked matches, columns already given their output names."""
    from pyspark.sql import functions as F

    left_in = left.filter(F.col(_OK)).select(
        ROW, hats.HEALPIX_COLUMN, F.col(plan.left.ra).cast("double").alias(RA),
        F.col(plan.left.dec).cast("double").alias(DEC))
    right_in = hats.read_hats(spark, catalog.path).select(
        F.col(catalog.id).alias(RIGHT_ID), hats.HEALPIX_COLUMN, F.col(catalog.ra).cast("double").alias(RA),
        F.col(catalog.dec).cast("double").alias(DEC), *catalog.band_columns)
    matches = plan.algorithm.match(left_in, right_in)
    renamed = match_columns(catalog.name, plan.algorithm.k)
    keep_rank = [F.col(RANK)] if plan.algorithm.k > 1 else []  # the join key of k > 1
    return matches.select(ROW, *keep_rank, *(F.col(c).alias(renamed.get(c, c)) for c in
                                             [*renamed, *catalog.band_columns]))


def _assemble(plan: CrossmatchPlan, left, matches: dict):
    """Left-join the matches onto every left row, add the flags, order the columns."""
    from pyspark.sql import functions as F

    k = plan.algorithm.k
    if k == 1:
        out = reduce(lambda acc, m: acc.join(m, ROW, "left"), matches.values(), left)
    else:
        # One row per (left row, rank) that any right catalog fills; left rows without any get one.
        ranks = reduce(lambda a, b: a.unionByName(b), (m.select(ROW, RANK) for m in matches.values())).distinct()
        out = left.join(ranks, ROW, "left")
        for name, m in matches.items():
            n_col = f"{name}_n_candidates"
            counts = m.filter(F.col(f"{name}_rank") == 1).select(ROW, n_col)
            out = out.join(m.drop(n_col), [ROW, RANK], "left").join(counts, ROW, "left")
    duplicated = left.groupBy(plan.left.id).agg(F.count(F.lit(1)).alias(_DUP)).filter(F.col(_DUP) > 1)
    out = out.join(duplicated, plan.left.id, "left")
    n_cols = [f"{c.name}_n_candidates" for c in plan.right]
    out = out.withColumns({c: F.coalesce(F.col(c), F.lit(0)).cast("int") for c in n_cols})
    return out.withColumn(FLAGS_COLUMN, _flags(plan, n_cols)).select(*plan.columns)


def _flags(plan: CrossmatchPlan, n_cols: list[str]):
    """The ``flags`` column: this stage's bits ORed into any the left catalog carried."""
    from pyspark.sql import functions as F

    def bit(condition, flag: Flag):
        return F.when(condition, F.lit(int(flag))).otherwise(F.lit(0))

    flags = (bit(~F.col(_OK), Flag.BAD_COORDS)
             + bit(_any(F.col(c) == 0 for c in n_cols), Flag.NO_MATCH)
             + bit(F.col(_DUP).isNotNull(), Flag.DUPLICATE_ID)
             + bit(_any(F.col(c) > 1 for c in n_cols), Flag.AMBIGUOUS_MATCH))  # distinct bits: + is |
    if FLAGS_COLUMN in plan.left.columns:
        flags = F.coalesce(F.col(FLAGS_COLUMN).cast("int"), F.lit(0)).bitwiseOR(flags)
    return flags.cast("int")


def _any(conditions):
    return reduce(lambda a, b: a | b, conditions)


def _summarise(spark, plan: CrossmatchPlan, rows_in: int, rows_out: int) -> dict:
    """Per-left-row statistics, read back from the written catalog (cheap: a few narrow columns)."""
    from pyspark.sql import functions as F

    out = hats.read_hats(spark, plan.target)
    if plan.algorithm.k > 1:  # one row per left row: its first rank (or its only row)
        ranks = [F.col(f"{c.name}_rank") for c in plan.right]
        out = out.filter(_any(F.coalesce(r == 1, F.lit(False)) for r in ranks)
                         | ~_any(r.isNotNull() for r in ranks))
    # One small job: rows per (flags, 0/1/2+ candidates in each right catalog).
    names = [c.name for c in plan.right]
    levels = [F.least(F.col(f"{name}_n_candidates"), F.lit(2)).alias(name) for name in names]
    groups = out.groupBy(FLAGS_COLUMN, *levels).count().collect()
    per_catalog = {}
    for name in names:
        matched = sum(g["count"] for g in groups if g[name] >= 1)
        per_catalog[name] = {"matched": matched, "unmatched": rows_in - matched,
                             "ambiguous": sum(g["count"] for g in groups if g[name] == 2),
                             "match_rate": matched / rows_in if rows_in else 0.0}
    flagged = dict.fromkeys((f.name for f in Flag), 0)
    for g in groups:
        for flag, hit in count_flags([g[FLAGS_COLUMN]]).items():
            flagged[flag] += hit * g["count"]
    return {"run": plan.run, "left": plan.left.name, "right": [c.name for c in plan.right],
            "path": str(plan.target), "rows_in": rows_in, "rows_out": rows_out,
            "radius_arcsec": plan.algorithm.radius_arcsec, "k": plan.algorithm.k,
            "join_order": plan.algorithm.properties().get("join_order"), "output_order": plan.output_order,
            "per_catalog": per_catalog, "flags": flagged}
