"""Ingest a real survey catalog (FITS, CSV, Parquet, or an existing HATS catalog) into catalogs/<name>.

Reads a file, a glob or a folder; maps the product's columns to the pipeline's native ones with a
survey map of conf/surveys/ (sdss_dr16q, sdss_dr16, desi_ls_dr9, lsst_dp1, unwise, galex_guvcat),
converting units to those of conf/bands.yaml; checks every file's columns, types and units before
reading any row; streams rows in chunks (ingest.chunk_rows) and writes a HEALPix-partitioned HATS
catalog at the smallest order whose partitions hold at most ingest.max_rows_per_partition rows.
Rows with unusable coordinates are kept and flagged BAD_COORDS (ingest.bad_coords=keep|drop|error).
An existing HATS catalog with the pipeline's columns is validated and linked, not rewritten.

Example: python jobs/ingest_catalog.py --input DR16Q_v4.fits --survey sdss_dr16q
         python jobs/ingest_catalog.py --input "sweeps/sweep-*.fits" --survey desi_ls_dr9
"""

from __future__ import annotations

import sys

from photoz_spark.cli import config_option, job_parser, run_job
from photoz_spark.paths import check_output


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "ingest.yaml")
    config_option(parser, "--input", "ingest.input", metavar="PATH",
                  help="a file, a quoted glob or a folder (sets ingest.input)")
    config_option(parser, "--survey", "ingest.survey", metavar="MAP",
                  help="a survey map of conf/surveys/ or a YAML path (sets ingest.survey)")
    config_option(parser, "--name", "ingest.name", metavar="NAME",
                  help="output catalog name, catalogs/<NAME> (sets ingest.name; default: the map's catalog)")
    from photoz_spark.ingest import IngestError
    from photoz_spark.ingest.run import ingest, make_plan

    def run(job, spark, plan):
        try:
            return ingest(spark, plan, job.workdir)
        except IngestError as err:  # found while streaming (e.g. a file cut short): nothing was written
            raise IngestError(f"{err} (nothing written)") from err

    def validate(job):
        plan = make_plan(job.config["ingest"], job.bands, job.workdir)
        inputs = [plan.hats_input] if plan.hats_input else [reader.path for reader in plan.readers]
        check_output(plan.target, job.workdir.root, inputs, "ingest.name")  # never over its own input
        return plan

    return run_job(parser, argv, validate, run, print_summary)


def print_summary(summary: dict, job=None) -> None:
    files = summary["files"]
    secs = summary["seconds"]
    print("\n=== ingest_catalog ===")
    print(f"survey map    {summary['survey']}  ->  catalog {summary['name']!r}  ({summary['mode']})")
    shown = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
    print(f"input         {shown}")
    print(f"rows          {summary['rows_read']:,d} read, {summary['rows_written']:,d} written")
    bad = summary["bad_coords"] + summary["dropped"]
    print(f"flagged rows  {'BAD_COORDS ' + format(bad, ',d') + ' (' + summary['bad_coords_policy'] + ')' if bad else 'none'}")
    if summary["out_of_range"]:
        print("out of range  " + ", ".join(f"{k} {v:,d}" for k, v in summary["out_of_range"].items())
              + " (kept as they are)")
    print(f"partitions    {summary['partitions']:,d} at HEALPix order {summary['order']}, largest "
          f"{summary['largest_partition']:,d} rows (limit {summary['max_rows_per_partition']:,d})")
    print(f"output        {summary['path']}")
    print(f"time          read {secs['read']:.1f} s, write {secs['write']:.1f} s, total {secs['total']:.1f} s "
          f"({summary['rows_per_s']:,.0f} rows/s)")


if __name__ == "__main__":
    main(sys.argv[1:])
