"""Band-set ablation (Table 2, Fig. 7): one model per band set, identical splits and settings.

For each band set of ablation.band_sets (the paper's six by default) builds features/<band_set>
(jobs/build_features.py, same split seed), checks that all band sets put their shared ids in
the same split, trains and registers <model_prefix>-<band_set> (jobs/train.py, same settings),
evaluates it on its test split and writes
  reports/ablation/ablation.md          Table 2, the paper's orderings checked (✓/✗), splits, Fig. 7
  reports/ablation/table2.csv, .json    the table (and the checks)
  reports/ablation/fig7_zphot_grid.png  z_phot vs z_spec per band set
With --skip-existing a band set whose features and latest model were made with the same
settings is kept, so a killed ablation restarts where it stopped.

Example: python jobs/ablation.py --band-sets optical8,optical_wise12 'ablation.train_overrides=[train.max_epochs=20]'
"""

from __future__ import annotations

import sys

from photoz_spark.cli import config_option, job_parser, run_job


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "ablation.yaml")
    parser.add_argument("--band-sets", metavar="A,B,...", help="comma-separated band sets (sets ablation.band_sets)")
    config_option(parser, "--skip-existing", "ablation.skip_existing", switch=True,
                  help="keep band sets whose features and model already match these settings")
    from photoz_spark.evaluate.ablation import AblationSettings, run_ablation
    from photoz_spark.jobs import build_features, train

    def validate(job):
        if job.args.band_sets:
            job.config["ablation"]["band_sets"] = [b.strip() for b in job.args.band_sets.split(",") if b.strip()]
        return AblationSettings.from_config(job.config["ablation"], job.bands)

    # One Spark session (started by run_job), shared by every band set's features and training.
    return run_job(parser, argv, validate,
                   lambda job, _, __: run_ablation(job.config, job.bands, job.workdir, build_features.main, train.main),
                   print_summary)


def print_summary(s: dict, job=None) -> None:
    from photoz_spark.evaluate.report import TABLE2_COLUMNS, text_table

    print("\n=== ablation ===")
    print("Table 2 (test split)\n" + text_table(s["table2"], TABLE2_COLUMNS))
    print("orderings of the paper")
    for check in s["checks"]:
        print(f"  {check['text']}")
    shared = ", ".join(f"{k} {v['shared']:,}/{v['disagree']}" for k, v in s["split_agreement"].items())
    print(f"splits        identical on shared ids (band set shared/disagreeing: {shared})")
    print("steps         " + "; ".join(f"{k}: features {v['features']}, model {v['model']}" for k, v in s["steps"].items()))
    print(f"report        {s['report']}")
    print(f"figure        {s['figure']}")
    print(f"tables        {', '.join(str(p) for p in s['tables'])}")
    print(f"time          {s['seconds']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
