"""Throughput of the simulated sky: the per-pixel kernel on one core vs the Spark job.

Run: .venv/bin/python bench/simulate.py [--radius-deg 2.0] [--master local[2]] [--pixels 4]

Prints rows/s of (a) ``simulate_pixel`` in this process (one core, no Spark), and (b) the
whole ``jobs/simulate_sky.py`` job on the given master (simulate + HATS write + commit),
measured side by side in one run, and the ratio of (b) to (a) times the number of cores.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def kernel_rate(n_pixels: int) -> tuple[float, int, float]:
    """rows/s of simulate_pixel on one core, rows simulated, grid build seconds."""
    from photoz_spark.bands import load_bands
    from photoz_spark.config import load_config
    from photoz_spark.sim.photometry import build_grid
    from photoz_spark.sim.sky import SkyModel, simulate_pixel

    registry = load_bands()
    t0 = time.perf_counter()
    grid = build_grid(registry)
    t_grid = time.perf_counter() - t0
    model = SkyModel(load_config("simulate.yaml")["sim"], registry, grid)
    simulate_pixel(model, 20000)  # warm-up
    rows, t0 = 0, time.perf_counter()
    for pixel in range(20001, 20001 + n_pixels):
        rows += sum(t.num_rows for t in simulate_pixel(model, pixel).values())
    return rows / (time.perf_counter() - t0), rows, t_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--radius-deg", type=float, default=2.0, help="footprint radius of the job run")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--pixels", type=int, default=4, help="pixels for the single-core kernel timing")
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    kernel, kernel_rows, t_grid = kernel_rate(args.pixels)
    from photoz_spark.jobs import simulate_sky

    with tempfile.TemporaryDirectory() as workdir:
        simulate_sky.main(["--workdir", workdir, "--master", args.master, "sim.figure=false",
                           f"sim.footprint.radius_deg={args.radius_deg}"])  # warm: JVM, grid cache
        t0 = time.perf_counter()
        summary = simulate_sky.main(["--workdir", workdir, "--master", args.master, "sim.figure=false",
                                     f"sim.footprint.radius_deg={args.radius_deg}"])
        wall = time.perf_counter() - t0
    rows = sum(summary["rows"].values())
    found = re.fullmatch(r"local\[(\d+)\]", args.master)
    cores = int(found.group(1)) if found else os.cpu_count()
    job = rows / wall
    print("\n=== bench/simulate.py ===")
    print(f"photometry grid build          {t_grid:8.1f} s (cached on disk by the job)")
    print(f"kernel, 1 core, no Spark        {kernel:10,.0f} rows/s  ({kernel_rows:,} rows, {args.pixels} pixels)")
    print(f"job on {args.master:<10} end to end {job:10,.0f} rows/s  ({rows:,} rows, {summary['area_deg2']:.1f} deg^2, "
          f"{wall:.1f} s)")
    print(f"  of which simulate {summary['seconds']['simulate']:.1f} s, HATS write+commit {summary['seconds']['write']:.1f} s")
    print(f"ratio job / ({cores} x kernel)     {job / (cores * kernel):10.2f}")


if __name__ == "__main__":
    main()
