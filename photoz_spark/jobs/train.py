"""Train the LSTM-MDNz model on features/<band_set>, log it to MLflow and register it.

Ranks run under Spark's TorchDistributor (gloo on CPU, nccl on GPU); each epoch prints one
line. The best weights (lowest validation NLL) are evaluated on the validation and test
splits, logged with the band set, feature layout and standardisation statistics, registered
as a new version of train.model_name, and given the alias 'champion' only if they beat the
current champion's validation CRPS. A killed run resumes from its last checkpoint.

Example: python jobs/train.py train.max_epochs=20 --band-set optical8
"""

from __future__ import annotations

import sys

from photoz_spark.cli import config_option, job_parser, run_job


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "train.yaml")
    config_option(parser, "--band-set", "train.band_set", metavar="NAME",
                  help="a band set of conf/bands.yaml (sets train.band_set)")
    from photoz_spark.train.locks import check_free
    from photoz_spark.train.run import train_and_register

    def validate(job):
        name = job.config["mlflow"]["model_name"]
        check_free(job.workdir.root / "train" / name, name)  # a training of this name runs: stop before Spark
        return job.bands.band_set(job.config["train"]["band_set"])

    return run_job(parser, argv, validate,
                   lambda job, spark, _: train_and_register(spark, job.config, job.bands, job.workdir), print_summary)


def print_summary(s: dict, job=None) -> None:
    m, d = s["metrics"], s["distributed"]
    print("\n=== train ===")
    print(f"rows          train {s['counts']['train']:,}  validation {s['counts']['validation']:,}  test {s['counts']['test']:,}")
    members = f" over {len(d['members'])} members (epochs below: the members' maxima)" if d.get("members") else ""
    print(f"training      {s['epochs']} epochs{members}{' (resumed)' if s['resumed'] else ''}, best epoch {d['best_epoch']}, "
          f"{d['epochs_run']} run, {'early stop' if d['stopped_early'] else 'max epochs'}; "
          f"{'GPU' if d['use_gpu'] else 'CPU'}, {'local' if d['local_mode'] else 'cluster'} mode; "
          f"{s['samples_per_s']:,.0f} samples/s; {s['seconds']['train']:.0f} s")
    for prefix, name in (("val", "validation"), ("test", "test")):
        if f"{prefix}_sigma_nmad" in m:
            print(f"{name:<13} sigma_NMAD {m[f'{prefix}_sigma_nmad']:.4f}  f_out {100 * m[f'{prefix}_f_out']:.2f} %  "
                  f"bias {m[f'{prefix}_bias']:+.4f}  MSE {m[f'{prefix}_mse']:.4f}  MAE {m[f'{prefix}_mae']:.4f}  "
                  f"CRPS {m[f'{prefix}_crps']:.4f}")
    if d.get("members"):
        print_members(d["members"], m)
    if "test_pit_ks" in m:
        line = f"PIT (test)    KS {m['test_pit_ks']:.3f} against U(0,1)"
        if "test_pit_ks_calibrated" in m:
            line += (f"; recalibrated (fitted on validation): KS {m['test_pit_ks_calibrated']:.3f}, "
                     f"CRPS {m['test_crps']:.4f} -> {m['test_crps_calibrated']:.4f}")
        print(line)
    print(f"registry      {s['promotion']['message']}")
    print(f"mlflow        run {s['run_id']} at {s['tracking_uri']}")
    if s["tracking_uri"].startswith("sqlite:"):
        print(f"              open the UI: .venv/bin/mlflow ui --backend-store-uri {s['tracking_uri']} --port 5000")


def print_members(members: list[dict], m: dict) -> None:
    """A deep ensemble's members (seed, epochs, metrics) beside the ensemble's own metrics."""
    prefix = "test" if "test_crps" in members[0] else "val"
    print(f"ensemble      {len(members)} members, one mixture of their PDFs ({prefix} split):")
    rows = [(f"member {i} (seed {r['seed']}, best epoch {r['best_epoch']} of {r['epochs_run']})", r)
            for i, r in enumerate(members)]
    for label, r in [*rows, ("ensemble", m)]:
        print(f"  {label:<42} sigma_NMAD {r[f'{prefix}_sigma_nmad']:.4f}  f_out {100 * r[f'{prefix}_f_out']:.2f} %  "
              f"CRPS {r[f'{prefix}_crps']:.4f}  PIT KS {r[f'{prefix}_pit_ks']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
