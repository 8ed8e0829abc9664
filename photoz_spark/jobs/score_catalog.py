"""Photometric redshifts for every row of a catalog, from a registered model.

Reads workdir/<score.input> (catalogs/<name> or matched/<run>: a HATS catalog holding the native
flux/error columns of the model's band set), loads models:/<mlflow.model_name>@<mlflow.alias> (or
version score.version) from the MLflow registry and writes workdir/scores/<name>: per row the
catalog's id, ra, dec and _healpix_29, z_phot_mean/median/mode/std, the 68 % and 95 % intervals
(z_phot_l68/u68/l95/u95), the mixture (mixmod_weights/means/stds, K each), n_observed and flags
(NOT_SCORED = no band observed: estimates NaN). Rows out == rows in; a rerun replaces the output.

Example: python jobs/score_catalog.py --input catalogs/desi_ls score.version=3
"""

from __future__ import annotations

import sys

from photoz_spark.cli import config_option, job_parser, run_job
from photoz_spark.config import resolve_path


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "score.yaml")
    config_option(parser, "--input", "score.input", metavar="PATH",
                  help="catalogs/<name> or matched/<run> under the workdir (sets score.input)")
    config_option(parser, "--model", "mlflow.model_name", metavar="NAME",
                  help="registered model name (sets mlflow.model_name)")
    config_option(parser, "--version", "score.version", metavar="N",
                  help="a registered version number; wins over the alias (sets score.version)")
    config_option(parser, "--alias", "mlflow.alias", metavar="ALIAS",
                  help="registry alias, default champion (sets mlflow.alias)")
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.bandcheck import check_bands_agree
    from photoz_spark.registry.resolve import resolve_model
    from photoz_spark.scoring.run import input_and_output, plan, score_catalog

    def validate(job):
        input_and_output(job.config["score"], job.workdir)  # the output can't replace the input: before the model
        files, directory = resolve_model(job.config, job.workdir, "score")
        model = PhotozModel(directory, job.bands)
        band_set = model.band_set  # with its name, from the model itself
        # the bands file describes the user's catalogs: it must describe the model's bands as the model does
        check_bands_agree(model.meta, model.bands, band_set, job.bands, job.config["bands_file"])
        plan(job.config["score"], job.bands, job.workdir, band_set)  # every input problem before Spark starts
        return files, band_set

    def run(job, spark, model):
        files, band_set = model
        return score_catalog(spark, job.config, job.bands, job.workdir, files, band_set,
                             str(resolve_path(job.config["bands_file"])))

    return run_job(parser, argv, validate, run, print_summary)


PDF_TEXT = {"none": "as the network predicts",
            "mixture": "recalibrated mixture of the model (mixmod_* and z_phot_* describe it)",
            "pit_map": "recalibrated by the model's PIT map (z_phot_*; mixmod_* stay the network's)"}


def print_summary(s: dict, job=None) -> None:
    print("\n=== score_catalog ===")
    print(f"input         {s['input']}  {s['rows_in']:,d} rows")
    print(f"model         {s['model_uri']} (band set {s['band_set']})")
    print(f"output        {s['output']}  {s['rows_out']:,d} rows, {s['partitions']} partitions")
    if s["absent_bands"] != "none":
        print(f"absent bands  {s['absent_bands']} (not in the catalog: scored as unobserved)")
    print(f"PDFs          {PDF_TEXT[s.get('calibration_method', 'none')]}")
    checks = s["precision_checks"]
    if checks:
        for c in checks:
            verdict = "used" if c["passed"] else "fell back to fp32"
            print(f"precision     {c['device']} {c['precision']}: |dz_mean| vs fp32 at the checked quantile "
                  f"{c['dz_quantile']:.1e} (max {c['dz_max']:.1e}, {c['rows']} rows) -> {verdict}")
    else:
        print(f"precision     fp32 (score.device={s['device']})")
    flagged = {k: v for k, v in s["flagged"].items() if v}
    print("flagged rows  " + (", ".join(f"{k} {v:,d}" for k, v in flagged.items()) or "none"))
    print(f"time          {s['seconds']:.1f} s ({s['rows_per_s']:,.0f} rows/s)")


if __name__ == "__main__":
    main(sys.argv[1:])
