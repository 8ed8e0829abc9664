"""Turn a matched catalog into the LSTM's input sequences, splits and statistics.

Reads matched/<features.matched>/ (from jobs/crossmatch.py) and writes, under the work directory,
features/<NAME>/ (NAME: --output, default the band set's name):
  features/<NAME>/       HATS catalog, one row per input row: id, ra, dec, z_spec, split
                         (train/validation/test, or excluded), features (raw flux and flux_err
                         per band in uJy, NaN where unobserved), observed, n_observed, flags;
  features/<NAME>/stats.json   mean and std per band and channel of the training split;
  features/<NAME>/layout.json  band order, channels, unit, split and selection settings.
The id/ra/dec, redshift and warning columns come from the catalog the crossmatch recorded
(features.left_catalog/z_column/zwarning_column=auto).

Example: python jobs/build_features.py --band-set optical8 features.split.seed=1
         python jobs/build_features.py --band-set ugrizy features.matched=my_specz --output dp1_ugrizy
"""

from __future__ import annotations

import sys

from photoz_spark.cli import config_option, job_parser, run_job


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "features.yaml")
    config_option(parser, "--band-set", "features.band_set", metavar="NAME",
                  help="a band set of conf/bands.yaml (sets features.band_set)")
    config_option(parser, "--output", "features.output", metavar="NAME",
                  help="write features/<NAME> (sets features.output; default: the band set's name)")
    config_option(parser, "--require-complete", "features.require_complete", switch=True,
                  help="exclude rows missing any band of the band set (sets features.require_complete=true)")
    from photoz_spark.features.run import build_features, validate

    return run_job(parser, argv, lambda job: validate(job.config["features"], job.bands, job.workdir),
                   lambda job, spark, _: build_features(spark, job.config["features"], job.bands, job.workdir),
                   print_summary)


def print_summary(summary: dict, job=None) -> None:
    rows_in, rows_out, secs = summary["rows_in"], summary["rows_out"], summary["seconds"]
    print("\n=== build_features ===")
    print(f"input         {summary['input']}  {rows_in:,d} rows")
    print(f"output        {summary['output']}  {rows_out:,d} rows, {summary['partitions']} partitions, "
          f"{summary['n_steps']} bands x 2 channels = {summary['n_values']} values/row")
    print("splits        " + ", ".join(f"{k} {v:,d} ({100 * v / max(rows_out, 1):.1f} %)"
                                       for k, v in summary["splits"].items()))
    print("excluded by   " + ", ".join(f"{k} {v:,d}" for k, v in summary["excluded_by_reason"].items()))
    observed = [f"{b} {100 * f:.0f}%" for b, f in summary["observed_fraction"].items()]
    for i in range(0, len(observed), 7):
        print(("observed      " if i == 0 else " " * 14) + "  ".join(observed[i:i + 7]))
    flagged = {k: v for k, v in summary["flagged"].items() if v}
    print("flagged rows  " + (", ".join(f"{k} {v:,d}" for k, v in flagged.items()) or "none"))
    print(f"stats         {summary['stats']} (training split)")
    faintest = summary.get("faintest_band")
    print(f"inputs        {summary['representation']}" + (
        f" (faintest band {faintest[0]}: mean flux {faintest[1]:.1f} softenings)" if faintest else ""))
    print(f"time          features {secs['features']:.1f} s, write {secs['write']:.1f} s, total {secs['total']:.1f} s "
          f"({rows_out / max(secs['total'], 1e-9):,.0f} rows/s)")


if __name__ == "__main__":
    main(sys.argv[1:])
