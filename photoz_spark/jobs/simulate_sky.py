"""Simulate the built-in multi-survey quasar sky as HEALPix-partitioned catalogs.

Writes, under the work directory:
  catalogs/dr16q, catalogs/sdss, catalogs/desi_ls (and catalogs/lsst if asked for)
      HATS-like Parquet in the real surveys' column names and units;
  truth/sky        true redshifts, parameters and cross-catalog ids (tests and benchmarks only);
  reports/simulate/colour_tracks.png
      colour-redshift tracks of the simulated quasars.

Example: python jobs/simulate_sky.py sim.footprint.radius_deg=2 sim.seed=7
"""

from __future__ import annotations

import sys
import time

from photoz_spark.cli import job_parser, run_job
from photoz_spark.config import cache_dir, resolve_path


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "simulate.yaml")
    from photoz_spark.sim.run import validate

    return run_job(parser, argv, lambda job: validate(job.config["sim"], job.bands), _run,
                   lambda summary, job: print_summary(summary, job.config))


def _run(job, spark, _) -> dict:
    from photoz_spark.sim import realism
    from photoz_spark.sim.run import colour_sample, simulate_sky

    config, registry, workdir = job.config, job.bands, job.workdir
    summary = simulate_sky(spark, config["sim"], registry, workdir, resolve_path(config["bands_file"]),
                           cache_dir(config))
    if config["sim"]["figure"] and "sdss" in summary["rows"] and "desi_ls" in summary["rows"]:
        t0 = time.time()
        sample = colour_sample(spark, workdir, registry)
        figure = workdir.reports / "simulate" / "colour_tracks.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        realism.colour_track_figure(sample, registry, figure,
                                    zero_points=config["sim"].get("systematics", {}).get("zero_point_mag"))
        summary["figure"] = str(figure)
        summary["stern_fraction_z_lt_3"] = realism.stern_fraction(
            sample["obs_wise_w1"], sample["obs_wise_w2"], sample["z"], registry)
        summary["seconds"]["figure"] = time.time() - t0
    return summary


def print_summary(summary: dict, config: dict) -> None:
    sim, secs = config["sim"], summary["seconds"]
    n_rows = sum(summary["rows"].values())
    fp = sim["footprint"]
    print("\n=== simulate_sky ===")
    print(f"footprint     disc ra={fp['ra']} dec={fp['dec']} r={fp['radius_deg']} deg: "
          f"{summary['pixels']} pixels at order {sim['sim_order']}, {summary['area_deg2']:.1f} deg^2, seed {sim['seed']}")
    for name, rows in summary["rows"].items():
        print(f"  {name:<10} {rows:>11,d} rows  {summary['partitions'][name]:>4d} partitions  {summary['paths'][name]}")
    print(f"time          grid {secs['grid']:.1f} s, simulate {secs['simulate']:.1f} s, "
          f"write {secs['write']:.1f} s, total {secs['total']:.1f} s ({n_rows / secs['total']:,.0f} rows/s)")
    if "figure" in summary:
        print(f"realism       W1-W2 (Vega) >= 0.8 for {100 * summary['stern_fraction_z_lt_3']:.1f} % "
              f"of quasars at z < 3 (Stern et al. 2012)")
        print(f"figure        {summary['figure']}")


if __name__ == "__main__":
    main(sys.argv[1:])
