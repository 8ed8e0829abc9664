"""Evaluate a registered model: Table 1, per-z-bin metrics, recalibration, zConf completeness and Figs. 3-6.

Fetches models:/<mlflow.model_name>@<mlflow.alias> (or a --version) from the MLflow registry, runs it
on every split of a labelled features catalog (default features/<the model's band set>, with
its train/validation/test split column) and writes
  reports/<model>-v<version>/report.md         Table 1, per-z-bin table, recalibration, completeness, figures
  reports/<model>-v<version>/fig3..fig6 *.png  z_phot vs z_spec, CRPS, example PDFs, PIT
  reports/<model>-v<version>/completeness.png  f_out, σ_NMAD vs the fraction kept by a zConf cut
  reports/<model>-v<version>/*.csv, *.json     the tables
and logs them (and Table 1 as eval_<split>_<metric> metrics) into the model's own MLflow run.
A rerun replaces the report.

Example: python jobs/evaluate.py --version 3
"""

from __future__ import annotations

import sys

from photoz_spark.cli import config_option, job_parser, run_job


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "evaluate.yaml")
    config_option(parser, "--model-name", "mlflow.model_name", metavar="NAME",
                  help="registered model name (sets mlflow.model_name)")
    config_option(parser, "--version", "evaluate.version", metavar="N",
                  help="registered version to evaluate (sets evaluate.version; default: the alias)")
    config_option(parser, "--alias", "mlflow.alias", metavar="ALIAS",
                  help="registry alias used without --version (sets mlflow.alias; default champion)")
    config_option(parser, "--features", "evaluate.features", metavar="DIR",
                  help="labelled features catalog, relative to the workdir (sets evaluate.features)")
    from photoz_spark.evaluate.run import EvalSettings, evaluate_registered

    return run_job(parser, argv, lambda job: EvalSettings.from_config(job.config["evaluate"]),
                   lambda job, _, __: evaluate_registered(job.config, job.bands, job.workdir), print_summary,
                   spark=False)


def print_summary(s: dict, job=None) -> None:
    from photoz_spark.evaluate.report import (
        CALIBRATION_COLUMNS,
        COMPLETENESS_COLUMNS,
        TABLE1_COLUMNS,
        calibration_method_text,
        text_table,
    )

    print("\n=== evaluate ===")
    print(f"model         {s['model_uri']} ({s['band_set']}), run {s['run_id']}")
    print(f"labelled      {s['features']}")
    print("Table 1\n" + text_table(s["table1"], TABLE1_COLUMNS))
    cal = s["calibration"]
    if cal["rows"]:
        which = "the model's" if cal["source"] == "model" else "fitted on validation, NOT in the model"
        print(f"recalibration ({which}: {calibration_method_text(cal)}), test split\n"
              + text_table(cal["rows"], CALIBRATION_COLUMNS))
    if s.get("completeness"):
        print(f"completeness  cut on zConf (mass within z_phot ± 0.05(1+z_phot)), {s['completeness']['pdf']} PDFs, "
              "test split\n" + text_table(s["completeness"]["rows"], COMPLETENESS_COLUMNS))
    print(f"report        {s['report']}")
    for path in s["figures"]:
        print(f"figure        {path}")
    print(f"mlflow        {'logged to' if s['logged'] else 'not logged (evaluate.log_to_mlflow=false):'} "
          f"run {s['run_id']} ({len(s['metrics'])} eval_ metrics, artifacts under evaluation/)")
    print(f"time          {s['seconds']:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
