"""Spark orchestration of the simulated sky: footprint -> one task per pixel -> HATS catalogs.

Stage 1 simulates each sky pixel independently on the executors and writes its rows to a
staging folder; stage 2 repartitions every catalog into the HATS layout; only then are all
catalogs moved into ``catalogs/`` (and the truth table into ``truth/``) together, so a failed
run leaves the previous sky untouched and a rerun replaces it.
"""

from __future__ import annotations

import time
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow.parquet as pq

from photoz_spark import hats
from photoz_spark.bands import Registry
from photoz_spark.config import require
from photoz_spark.sim.photometry import load_or_build_grid
from photoz_spark.sim.sky import SIMULATED_CATALOGS, SkyModel, pixel_area_deg2, simulate_pixel
from photoz_spark.staging import job_staging

TRUTH = "truth"
COORDS = {"dr16q": ("RA", "DEC"), "sdss": ("ra", "dec"), "desi_ls": ("RA", "DEC"),
          "lsst": ("coord_ra", "coord_dec"), TRUTH: ("ra_true", "dec_true")}


def validate(sim: dict, registry: Registry) -> None:
    """Refuse settings the simulator cannot honour, with what is allowed."""
    unknown = [c for c in sim["catalogs"] if c not in SIMULATED_CATALOGS]
    require(not unknown, f"sim.catalogs: unknown {unknown}; allowed: {list(SIMULATED_CATALOGS)}")
    require(len(sim["catalogs"]) > 0, "sim.catalogs: name at least one catalog")
    require(0 <= sim["catalog_order"] <= sim["sim_order"] <= 12,
            f"need 0 <= sim.catalog_order <= sim.sim_order <= 12, got {sim['catalog_order']} and {sim['sim_order']}")
    fp = sim["footprint"]
    require(-90.0 <= fp["dec"] <= 90.0, f"sim.footprint.dec must be in [-90, 90], got {fp['dec']}")
    require(0.0 < fp["radius_deg"] <= 180.0, f"sim.footprint.radius_deg must be in (0, 180], got {fp['radius_deg']}")
    for key in ("density_deg2",):
        require(sim["quasars"][key] >= 0, f"sim.quasars.{key} must be >= 0")
    for key in ("star_density_deg2", "galaxy_density_deg2"):
        require(sim["field"][key] >= 0, f"sim.field.{key} must be >= 0")
    q = sim["quasars"]
    require(q["i_mag_min"] < q["i_mag_max"], "sim.quasars.i_mag_min must be < i_mag_max")
    require(len(q["z_nodes"]) == len(q["z_weights"]) >= 2, "sim.quasars.z_nodes and z_weights: same length >= 2")
    require(min(q["z_nodes"]) >= 0 and max(q["z_nodes"]) <= 6.0, "sim.quasars.z_nodes must lie in [0, 6]")
    # The photometry grid spans delta alpha_nu in [-1, 1]; each quasar's slope is clipped there.
    require(-1.0 <= q["tilt_mean"] <= 1.0, f"sim.quasars.tilt_mean must be in [-1, 1], got {q['tilt_mean']}")
    for frac in ("reddened_fraction", "galex_coverage", "zwarning_fraction", "host_psf_fraction"):
        require(0.0 <= q[frac] <= 1.0, f"sim.quasars.{frac} must be in [0, 1], got {q[frac]}")
    for frac in ("wrong_z_fraction", "bal_fraction", "lobal_share", "dla_fraction"):
        require(0.0 <= q.get(frac, 0.0) <= 1.0, f"sim.quasars.{frac} must be in [0, 1], got {q.get(frac)}")
    syst = sim.get("systematics", {})
    require(0.0 <= syst.get("bad_error_fraction", 0.0) <= 1.0,
            f"sim.systematics.bad_error_fraction must be in [0, 1], got {syst.get('bad_error_fraction')}")
    if sim.get("variability", {}).get("enabled", False):
        surveys = {b.survey for b in registry.bands.values()}
        missing = sorted(surveys - set(sim["variability"]["surveys"]))
        require(not missing, f"sim.variability.surveys: no epochs for surveys {missing}")
    if sim.get("galactic_extinction", {}).get("enabled", False):
        missing = [b for b in registry.bands if b not in sim["galactic_extinction"]["r_true"]]
        require(not missing, f"sim.galactic_extinction.r_true: no A/E(B-V) for bands {missing}")
    missing = [b for b in registry.bands if b not in sim["depth_5sigma"]]
    require(not missing, f"sim.depth_5sigma: no depth for bands {missing}")
    missing = [c for c in sim["catalogs"] if c not in sim["astrometry_arcsec"]]
    require(not missing, f"sim.astrometry_arcsec: no scatter for catalogs {missing}")


def footprint_pixels(sim: dict) -> np.ndarray:
    """Nested pixels (sim_order) whose centres lie in the footprint disc (at least one)."""
    fp, nside = sim["footprint"], 2 ** sim["sim_order"]
    vec = hp.ang2vec(fp["ra"], fp["dec"], lonlat=True)
    pixels = hp.query_disc(nside, vec, np.radians(fp["radius_deg"]), nest=True)
    if len(pixels) == 0:
        pixels = np.array([hp.ang2pix(nside, fp["ra"], fp["dec"], nest=True, lonlat=True)])
    return np.sort(pixels)


def _stage_pixel(model: SkyModel, pixel: int, raw_dir: str) -> dict[str, int]:
    """Executor side: simulate one pixel and write each of its tables to the staging folder."""
    counts = {}
    for name, table in simulate_pixel(model, pixel).items():
        folder = Path(raw_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"pixel={pixel}.parquet")
        counts[name] = table.num_rows
    return counts


def simulate_sky(spark, sim: dict, registry: Registry, workdir, registry_file, cache: Path | None = None) -> dict:
    """Simulate the sky described by ``sim`` and write its catalogs under ``workdir``.

    Args:
        spark: the SparkSession.
        sim: the ``sim`` section of the configuration (conf/simulate.yaml).
        registry: bands (conf/bands.yaml).
        workdir: a ``cli.Workdir``; catalogs go to ``catalogs/<name>``, truth to ``truth/sky``.
        registry_file: the bands file ``registry`` came from (keys the photometry-grid cache).
        cache: folder of the photometry-grid cache (None: build it every time).
    Returns:
        Summary: pixels, area, rows per catalog, seconds per stage, output paths.
    """
    validate(sim, registry)
    pixels = footprint_pixels(sim)
    t0 = time.time()
    grid = load_or_build_grid(registry, registry_file, cache)
    model = SkyModel(sim=sim, registry=registry, grid=grid)
    t_grid = time.time() - t0
    with job_staging(workdir.root, "simulate") as stage:
        raw = stage.path / "raw"
        sc = spark.sparkContext
        shared = sc.broadcast(model)
        raw_dir = str(raw)
        counts = (sc.parallelize([int(p) for p in pixels], len(pixels))
                  .map(lambda p: _stage_pixel(shared.value, p, raw_dir)).collect())
        t_sim = time.time() - t0 - t_grid
        provenance = {"photoz_sim_seed": sim["seed"], "photoz_sim_order": sim["sim_order"],
                      "photoz_sim_pixels": len(pixels)}
        targets = {name: workdir.catalog(name) for name in sim["catalogs"]}
        targets[TRUTH] = workdir.truth / "sky"
        summaries = {}
        for name, target in targets.items():
            ra, dec = COORDS[name]
            df = spark.read.parquet(str(raw / name))
            summaries[name] = hats.write_hats(df, stage.output(name, target), order=sim["catalog_order"],
                                              ra_col=ra, dec_col=dec, catalog_name=name,
                                              extra_properties=provenance)
        shared.unpersist()
        stage.commit()  # all catalogs together, after every one succeeded
    t_total = time.time() - t0
    rows = {name: sum(c.get(name, 0) for c in counts) for name in targets}
    return {
        "pixels": len(pixels), "area_deg2": len(pixels) * pixel_area_deg2(sim["sim_order"]),
        "rows": rows, "paths": {name: str(t) for name, t in targets.items()},
        "partitions": {name: s["n_partitions"] for name, s in summaries.items()},
        "seconds": {"grid": t_grid, "simulate": t_sim, "write": t_total - t_grid - t_sim, "total": t_total},
    }


def colour_sample(spark, workdir, registry: Registry, max_rows: int = 40000) -> dict:
    """Quasars' true redshift, catalog fluxes and noiseless fluxes, joined through the truth ids.

    Uses the SDSS catalog for u..z and the DESI catalog for W1/W2 (nanomaggies in both).
    Returns arrays ``z``, ``obs_<band>`` and ``true_<band>`` for the bands of the figure.
    """
    from pyspark.sql import functions as F

    bands = ["sdss_u", "sdss_g", "sdss_r", "sdss_i", "sdss_z", "wise_w1", "wise_w2"]
    truth = hats.read_hats(spark, workdir.truth / "sky")
    sdss = hats.read_hats(spark, workdir.catalog("sdss"))
    desi = hats.read_hats(spark, workdir.catalog("desi_ls"))
    cols = [F.col("t.z_true").alias("z")] + [F.col(f"t.true_flux_{b}").alias(f"true_{b}") for b in bands]
    for b in bands:
        band = registry.band(b)
        source = "s" if band.catalog == "sdss" else "d"
        cols.append(F.col(f"{source}.{band.flux}").alias(f"obs_{b}"))
    joined = (truth.alias("t")
              .join(sdss.alias("s"), F.col("t.sdss_objID") == F.col("s.objID"))
              .join(desi.alias("d"), F.col("t.LS_ID") == F.col("d.LS_ID"))
              .select(cols))
    n = joined.count()
    if n > max_rows:
        joined = joined.sample(fraction=max_rows / n, seed=1)
    pdf = joined.toPandas()
    return {c: pdf[c].to_numpy() for c in pdf.columns}
