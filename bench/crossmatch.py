"""Crossmatch throughput: the Spark job vs astropy's match_coordinates_sky vs LSDB, same catalogs.

Run: .venv/bin/python bench/crossmatch.py [--left-rows 1000000] [--right-rows 10000000] [--master local[2]]

Builds synthetic HATS catalogs (cached under --workdir): a right catalog "sdss" of uniform points in
a ~200 deg^2 patch (ra 150..170, dec -5..5) with its 10 band columns, and a left catalog "dr16q"
of which 95 % are right points displaced by 0.1-0.3 arcsec (the truth) and 5 % random points.
Then, side by side in one run, with a 1.5 arcsec radius and the nearest counterpart:

* the job ``jobs/crossmatch.py`` on ``--master`` (read, match, HATS write, summary). Apart, not
  counted: the JVM start and its first trivial job (JIT warm-up of Spark's own code, the same
  for any job; its CPU seconds are printed), and the right catalog's margin cache
  (``photoz_spark.crossmatch.margins``, built once per right catalog and margin order and kept
  with the catalog, as LSDB's; built in this process, so that no Python worker is warm when the
  job starts);
* astropy ``match_coordinates_sky`` in this process (one core; SkyCoord construction and k-d tree
  build included);
* LSDB ``Catalog.crossmatch`` (k-d tree per partition pair, dask) in a subprocess of the bench-only
  venv ``--lsdb-python`` (make it with ``python -m venv .venv-bench && .venv-bench/bin/pip install
  lsdb``); its right margin cache, which LSDB builds once at import time, is timed apart.

Prints rows/s of each (left rows per second), CPU seconds (this process tree's user + system
time: on a shared machine the load-independent measure) and left rows per CPU second, per core (Spark: the master's cores; astropy: 1;
LSDB: dask's threaded scheduler, a thread per core), the per-core ratios, completeness and purity
against the truth, and how often each agrees with the Spark job. The documented run is 1M x 10M.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PATCH = {"ra": (150.0, 170.0), "dec": (-5.0, 5.0)}
RADIUS_ARCSEC = 1.5
ARCSEC = 1.0 / 3600.0


# --- synthetic catalogs ----------------------------------------------------------------------

def _uniform(rng, n):
    ra = rng.uniform(*PATCH["ra"], n)
    sin_dec = rng.uniform(*np.sin(np.radians(PATCH["dec"])), n)
    return ra, np.degrees(np.arcsin(sin_dec))


def make_catalogs(workdir: Path, n_left: int, n_right: int, order: int, seed: int = 7) -> np.ndarray:
    """Write catalogs/dr16q and catalogs/sdss (unless cached); returns the truth: right id per left row, -1 if none."""
    import pyarrow as pa

    from photoz_spark import hats
    from photoz_spark.bands import load_bands

    tag = f"{n_left}x{n_right}-order{order}-seed{seed}"
    truth_file = workdir / f"truth-{tag}.npy"
    if truth_file.is_file() and all((workdir / "catalogs" / c / "properties").is_file() and
                                    hats.read_properties(workdir / "catalogs" / c).get("photoz_bench") == tag
                                    for c in ("dr16q", "sdss")):
        return np.load(truth_file)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    ra, dec = _uniform(rng, n_right)
    columns = {"objID": np.arange(n_right, dtype=np.int64), "ra": ra, "dec": dec}
    for band in load_bands().catalog_bands("sdss"):
        columns[band.flux] = rng.normal(10.0, 3.0, n_right).astype(np.float32)
        columns[band.err] = rng.uniform(0.5, 2.0, n_right).astype(np.float32)
    columns["_healpix_29"] = hats.healpix29(ra, dec)
    hats.write_hats_table(pa.table(columns), workdir / "catalogs" / "sdss", order=order, ra_col="ra",
                          dec_col="dec", catalog_name="sdss", extra_properties={"photoz_bench": tag})
    del columns
    n_true = round(0.95 * n_left)
    truth = np.full(n_left, -1, dtype=np.int64)
    truth[:n_true] = rng.choice(n_right, n_true, replace=False)
    step, angle = rng.uniform(0.1, 0.3, n_true) * ARCSEC, rng.uniform(0, 2 * np.pi, n_true)
    lra, ldec = _uniform(rng, n_left)
    ldec[:n_true] = dec[truth[:n_true]] + step * np.cos(angle)
    lra[:n_true] = ra[truth[:n_true]] + step * np.sin(angle) / np.cos(np.radians(ldec[:n_true]))
    shuffle = rng.permutation(n_left)  # THING_ID = row of the truth array
    truth, lra, ldec = truth[shuffle], lra[shuffle], ldec[shuffle]
    hats.write_hats_table(pa.table({"THING_ID": np.arange(n_left, dtype=np.int64), "RA": lra, "DEC": ldec,
                                    "_healpix_29": hats.healpix29(lra, ldec)}),
                          workdir / "catalogs" / "dr16q", order=order, ra_col="RA", dec_col="DEC",
                          catalog_name="dr16q", extra_properties={"photoz_bench": tag})
    np.save(truth_file, truth)
    print(f"catalogs written in {time.perf_counter() - t0:.1f} s ({tag})", flush=True)
    return truth


def _read_columns(path: Path, columns: list[str]) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(path / "dataset", columns=columns, partitioning=None)
    return {c: table.column(c).fill_null(-1).to_numpy() for c in columns}  # ids: -1 for none


# --- the three methods -----------------------------------------------------------------------

def run_spark(workdir: Path, master: str, n_left: int) -> dict:
    """The job end to end; returns seconds and the matched right id per left row (-1: none)."""
    from photoz_spark.config import load_config
    from photoz_spark.crossmatch import geometry, margins
    from photoz_spark.spark import get_spark

    overrides = [f"spark.master={master}", "spark.driver_memory=6g", "spark.log_level=ERROR"]
    t0 = time.perf_counter()
    spark = get_spark(load_config(overrides=overrides))  # the JVM start is not the crossmatch's
    t_jvm = time.perf_counter() - t0
    cpu0 = _tree_cpu_seconds()
    spark.range(10).count()  # nor is the JIT warm-up of Spark's own code by its first job
    warmup_cpu = _tree_cpu_seconds() - cpu0
    t0, cpu0 = time.perf_counter(), _tree_cpu_seconds()
    # In this process, not on Spark: the job must start its Python workers cold, as a fresh job does.
    margin = margins.build(None, workdir / "catalogs" / "sdss", geometry.auto_join_order(RADIUS_ARCSEC))
    margin.update(seconds=time.perf_counter() - t0, cpu_seconds=_tree_cpu_seconds() - cpu0)
    spec = importlib.util.spec_from_file_location("crossmatch_job", ROOT / "jobs" / "crossmatch.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    t0, procs0 = time.perf_counter(), _tree_cpu_by_process()
    summary = job.main(["--workdir", str(workdir), "crossmatch.right=[sdss]",
                        f"crossmatch.radius_arcsec={RADIUS_ARCSEC}", *overrides])
    seconds, by_kind = time.perf_counter() - t0, _cpu_by_kind(procs0, _tree_cpu_by_process())
    cpu = sum(by_kind.values())
    out = _read_columns(workdir / "matched" / "dr16q", ["THING_ID", "sdss_id"])
    match = np.full(n_left, -1, dtype=np.int64)
    match[out["THING_ID"]] = out["sdss_id"]
    return {"seconds": seconds, "cpu_seconds": cpu, "cpu_by_kind": by_kind, "match": match, "jvm_seconds": t_jvm,
            "warmup_cpu_seconds": warmup_cpu, "margin": margin, "margin_cache": summary["margin_cache"],
            "join_order": summary["join_order"], "task_order": summary["task_order"],
            "right_rows_read": summary["right_rows_read"], "right_rows_used": summary["right_rows_used"]}


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and every live descendant (JVM, Python workers).

    On a shared machine wall time measures the other jobs too; CPU time is each method's own
    work. Descendants that exit during a run would be missed (Spark keeps its workers alive).
    """
    return sum(_tree_cpu_by_process().values())


def _tree_cpu_by_process() -> dict:
    """``_tree_cpu_seconds`` per process: {(pid, "driver" | "jvm" | "python daemon/worker"): CPU s}."""
    import psutil

    me = psutil.Process()
    found = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            kind = "driver" if proc.pid == me.pid else "jvm" if proc.name() == "java" else "python daemon/worker"
            found[(proc.pid, kind)] = times.user + times.system
        except psutil.Error:  # gone, or a zombie
            pass
    return found


def _cpu_by_kind(before: dict, after: dict) -> dict:
    """CPU seconds spent between two ``_tree_cpu_by_process`` snapshots, summed per kind of process."""
    spent: dict = {}
    for (pid, kind), cpu in after.items():
        spent[kind] = spent.get(kind, 0.0) + cpu - before.get((pid, kind), 0.0)
    return spent


def run_astropy(workdir: Path, n_left: int) -> dict:
    """match_coordinates_sky on the same catalogs (read with pyarrow, not timed)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord, match_coordinates_sky

    left = _read_columns(workdir / "catalogs" / "dr16q", ["THING_ID", "RA", "DEC"])
    right = _read_columns(workdir / "catalogs" / "sdss", ["objID", "ra", "dec"])
    t0, cpu0 = time.perf_counter(), time.process_time()
    idx, sep, _ = match_coordinates_sky(SkyCoord(left["RA"], left["DEC"], unit="deg"),
                                        SkyCoord(right["ra"], right["dec"], unit="deg"))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    match = np.full(n_left, -1, dtype=np.int64)
    within = sep <= RADIUS_ARCSEC * u.arcsec
    match[left["THING_ID"][within]] = right["objID"][idx[within]]
    return {"seconds": seconds, "cpu_seconds": cpu, "match": match}


def run_lsdb(workdir: Path, python: str, n_left: int) -> dict:
    """LSDB in its own venv (a subprocess); returns {"error": why} if it cannot run."""
    if not Path(python).is_file():
        return {"error": f"{python} not found (python -m venv .venv-bench && .venv-bench/bin/pip install lsdb)"}
    result_file = workdir / "lsdb-result.npz"
    result_file.unlink(missing_ok=True)
    proc = subprocess.run([python, __file__, "--lsdb-worker", str(workdir), str(result_file)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0 or not result_file.is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": f"LSDB failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}"}
    data = np.load(result_file)
    match = np.full(n_left, -1, dtype=np.int64)
    match[data["thing_id"]] = data["obj_id"]
    return {"seconds": float(data["seconds"]), "cpu_seconds": float(data["cpu_seconds"]),
            "margin_seconds": float(data["margin_seconds"]), "match": match,
            "version": str(data["version"])}


def lsdb_worker(workdir: str, result_file: str) -> None:
    """Runs under the LSDB venv: read both catalogs, build the right margin, crossmatch, save ids."""
    import warnings

    import lsdb
    from lsdb.loaders.dataframe.margin_catalog_generator import MarginCatalogGenerator

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    right = lsdb.read_hats(f"{workdir}/catalogs/sdss", columns="all")
    # A margin of 2x the radius: matches across partition borders (built once, at import, in LSDB).
    right.margin = MarginCatalogGenerator(right, margin_threshold=2 * RADIUS_ARCSEC).create_catalog()
    t_margin = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()  # process_time: every thread of dask's pool
    left = lsdb.read_hats(f"{workdir}/catalogs/dr16q", columns="all")
    matched = left.crossmatch(right, radius_arcsec=RADIUS_ARCSEC, n_neighbors=1, how="left",
                              suffixes=("", "_r"), suffix_method="all_columns").compute(progress_bar=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ids = matched["objID_r"].to_numpy(dtype="float64", na_value=np.nan)
    found = ~np.isnan(ids)
    np.savez(result_file, thing_id=matched["THING_ID"].to_numpy()[found], obj_id=ids[found].astype(np.int64),
             seconds=seconds, cpu_seconds=cpu, margin_seconds=t_margin, version=lsdb.__version__)


# --- report ----------------------------------------------------------------------------------

def quality(match: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Completeness (true pairs found) and purity (reported pairs that are true)."""
    has_truth, reported = truth >= 0, match >= 0
    completeness = np.mean(match[has_truth] == truth[has_truth])
    purity = np.mean(match[reported] == truth[reported]) if reported.any() else float("nan")
    return float(completeness), float(purity)


def spark_cores(master: str) -> int:
    """Cores of a local master (local[N], local[*] = all of this machine's)."""
    inside = master[master.find("[") + 1:master.find("]")] if "[" in master else "1"
    return os.cpu_count() if inside == "*" else int(inside.split(",")[0])


def report(results: dict, truth: np.ndarray, args) -> None:
    spark_rate = args.left_rows / results["spark"]["seconds"]
    spark_per_core = spark_rate / spark_cores(args.master)
    print("\n=== bench/crossmatch.py ===")
    print(f"left {args.left_rows:,} x right {args.right_rows:,} rows, radius {RADIUS_ARCSEC} arcsec, nearest "
          f"counterpart, catalogs at order {args.order}, Spark margin order {results['spark']['join_order']}, "
          f"task order {results['spark']['task_order']}, right rows read {results['spark']['right_rows_read']:,} "
          f"({results['spark']['right_rows_used']:,} in the search regions)")
    spark_per_cpu = args.left_rows / results["spark"]["cpu_seconds"]
    print(f"{'method':<38} {'cores':>5} {'seconds':>8} {'left rows/s':>12} {'per core':>9} {'vs Spark':>9} "
          f"{'CPU s':>7} {'rows/CPU s':>10} {'vs Spark':>9} {'complete':>9} {'pure':>9} {'= Spark':>8}")
    cores = {"spark": spark_cores(args.master), "astropy": 1, "lsdb": os.cpu_count()}  # dask: a thread per core
    for name, label in (("spark", f"Spark job, {args.master}"), ("astropy", "astropy match_coordinates_sky, 1 core"),
                        ("lsdb", "LSDB crossmatch (dask)")):
        res = results.get(name, {})
        if "error" in res or not res:
            print(f"{label:<38} skipped: {res.get('error', 'not run')}")
            continue
        rate = args.left_rows / res["seconds"]
        per_core = rate / cores[name]
        completeness, purity = quality(res["match"], truth)
        agree = np.mean(res["match"] == results["spark"]["match"])
        per_cpu = args.left_rows / res["cpu_seconds"]
        print(f"{label:<38} {cores[name]:5d} {res['seconds']:8.1f} {rate:12,.0f} {per_core:9,.0f} "
              f"{per_core / spark_per_core:8.2f}x {res['cpu_seconds']:7.1f} {per_cpu:10,.0f} "
              f"{per_cpu / spark_per_cpu:8.2f}x {100 * completeness:8.3f}% {100 * purity:8.3f}% {100 * agree:7.3f}%")
    spark = results["spark"]
    print(f"Spark JVM start (not counted): {spark['jvm_seconds']:.1f} s; its first trivial job (JIT warm-up, not "
          f"counted): {spark['warmup_cpu_seconds']:.1f} CPU s; with it Spark does "
          f"{args.left_rows / (spark['cpu_seconds'] + spark['warmup_cpu_seconds']):,.0f} left rows per CPU s")
    print("Spark job CPU s by process: " + ", ".join(f"{kind} {cpu:.1f}" for kind, cpu in sorted(spark["cpu_by_kind"].items()))
          + f"; machine load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    print(f"Spark right margin cache build (not counted, a one-off per right catalog): {spark['margin']['seconds']:.1f} s, "
          f"{spark['margin']['cpu_seconds']:.1f} CPU s, {spark['margin']['rows']:,d} border rows; "
          f"the job found it: {spark['margin_cache']}")
    if "margin_seconds" in results.get("lsdb", {}):
        print(f"LSDB {results['lsdb']['version']}: right margin cache build (not counted, a one-off at import "
              f"in LSDB): {results['lsdb']['margin_seconds']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--left-rows", type=int, default=1_000_000)
    parser.add_argument("--right-rows", type=int, default=10_000_000)
    parser.add_argument("--order", type=int, default=5, help="HEALPix order of the catalogs' partitions")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", default=str(ROOT / "workdir" / "bench_crossmatch"))
    parser.add_argument("--lsdb-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["astropy", "lsdb"])
    parser.add_argument("--lsdb-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lsdb_worker:
        lsdb_worker(*args.lsdb_worker)
        return
    sys.path.insert(0, str(ROOT))
    workdir = Path(args.workdir).resolve()
    truth = make_catalogs(workdir, args.left_rows, args.right_rows, args.order)
    results = {}
    if "lsdb" not in args.skip:  # first, while this process holds no JVM or k-d tree
        results["lsdb"] = run_lsdb(workdir, args.lsdb_python, args.left_rows)
        print(f"lsdb: {json.dumps({k: v for k, v in results['lsdb'].items() if k != 'match'})}", flush=True)
    results["spark"] = run_spark(workdir, args.master, args.left_rows)
    if "astropy" not in args.skip:
        results["astropy"] = run_astropy(workdir, args.left_rows)
    report(results, truth, args)


if __name__ == "__main__":
    main()
