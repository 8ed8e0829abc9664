"""Crossmatch a left catalog (default dr16q) with right catalogs (default sdss, desi_ls) by position.

Reads catalogs/<name> (HATS) under the work directory, under any name jobs/ingest_catalog.py gave
them, and writes matched/<run> (HATS, the left catalog's partitioning): every left row, its nearest
counterpart within the radius in each right catalog (<name>_id, <name>_sep_arcsec,
<name>_n_candidates, that catalog's band columns and their Milky Way extinction columns) and a
flags column (BAD_COORDS, DUPLICATE_ID, NO_MATCH, AMBIGUOUS_MATCH).

Example: python jobs/crossmatch.py --workdir workdir crossmatch.radius_arcsec=1.0 crossmatch.right=[sdss]
         python jobs/crossmatch.py crossmatch.run=my_specz crossmatch.left=my_specz crossmatch.right=[dp1]
"""

from __future__ import annotations

import sys

from photoz_spark.cli import job_parser, run_job


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "crossmatch.yaml")
    from photoz_spark.crossmatch.run import crossmatch, make_plan

    def run(job, spark, plan):
        summary = crossmatch(spark, plan, job.workdir)
        if plan.algorithm.k == 1 and summary["rows_out"] != summary["rows_in"]:
            raise RuntimeError(f"crossmatch wrote {summary['rows_out']} rows for {summary['rows_in']} left rows; "
                               "with k=1 every left row must give exactly one row")
        return summary

    return run_job(parser, argv, lambda job: make_plan(job.config["crossmatch"], job.bands, job.workdir), run,
                   print_summary)


def print_summary(summary: dict, job=None) -> None:
    from photoz_spark.crossmatch.geometry import pixel_size_arcsec

    order = summary["join_order"]
    print("\n=== crossmatch ===")
    print(f"match         radius {summary['radius_arcsec']:g} arcsec, k={summary['k']}, margin order {order} "
          f"(pixel {pixel_size_arcsec(order):.1f} arcsec), output order {summary['output_order']}")
    print(f"tasks         one per block of left pixels at order {summary['task_order']}; "
          f"{summary['right_rows_read']:,d} right rows read, {summary['right_rows_used']:,d} in the search regions")
    print(f"left          {summary['left']:<10} {summary['rows_in']:>11,d} rows in, {summary['rows_out']:,d} rows out")
    for name, s in summary["per_catalog"].items():
        print(f"  {name:<11} matched {s['matched']:>11,d} ({100 * s['match_rate']:5.1f} %)  "
              f"unmatched {s['unmatched']:,d}  ambiguous {s['ambiguous']:,d}")
    flagged = ", ".join(f"{name} {n:,d}" for name, n in summary["flags"].items() if n) or "none"
    print(f"flagged rows  {flagged}")
    print(f"time          {summary['seconds']:.1f} s ({summary['rows_per_s']:,.0f} left rows/s)")
    print(f"output        {summary['path']}")


if __name__ == "__main__":
    main(sys.argv[1:])
