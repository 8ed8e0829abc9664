"""Parity of the distributed path: jobs/train.py (TorchDistributor ranks) against one plain process.

Run: python bench/parity.py WORKDIR [--band-set ugrizy] [--seeds 0,1,2] [--epochs 8] [--batch 256]
         [--processes 2] [--overrides train.recipe=paper ...] [--per-rank-batch]

WORKDIR holds features/<band set> (jobs/build_features.py on a simulated sky, e.g. with
``sim.catalogs=[dr16q,sdss,desi_ls,lsst]`` and ``crossmatch.right=[sdss,desi_ls,lsst]`` for
ugrizy). For every seed it trains (a) jobs/train.py with --processes DDP ranks through the
library and MLflow, and (b) the same network in one plain PyTorch process (bench/plain.py)
on the same split, global batch, epochs, recipe and seed, then prints the test metrics of
each (sigma_NMAD, f_out, CRPS, PIT KS), their means and seed-to-seed spreads.
``--per-rank-batch`` gives the job ``processes x batch`` (the behaviour before train.batch_size
became the global batch) to show what it cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from plain import METRICS, fit, line


def job_run(workdir: Path, band_set: str, seed: int, batch: int, epochs: int, processes: int,
            overrides: list[str]) -> dict:
    from photoz_spark.jobs import train as train_job

    out = train_job.main(["--workdir", str(workdir), "--band-set", band_set, f"train.seed={seed}",
                          f"train.batch_size={batch}", f"train.max_epochs={epochs}", f"train.num_processes={processes}",
                          f"mlflow.model_name=parity-{band_set}-{seed}-{processes}x{batch}", "train.resume=false",
                          *overrides])
    return {k: out["metrics"][f"test_{k}"] for k in METRICS} | {"seconds": out["seconds"]["train"]}


def plain_run(workdir: Path, band_set: str, seed: int, batch: int, epochs: int, overrides: list[str]) -> dict:
    from photoz_spark.config import load_config
    from photoz_spark.model import ModelConfig
    from photoz_spark.train.run import settings_from

    config = load_config("train.yaml", overrides=[f"train.seed={seed}", f"train.batch_size={batch}",
                                                  f"train.max_epochs={epochs}", *overrides])
    settings = settings_from(config["train"])
    fields = ModelConfig.__dataclass_fields__
    model = {k: v for k, v in config["model"].items() if k in fields}
    out = fit(workdir / "features" / band_set, settings, model, threads=1)
    return out["test"] | {"seconds": out["seconds"]}


def summary(rows: list[dict]) -> dict:
    return {k: (statistics.mean(r[k] for r in rows), statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0)
            for k in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--band-set", default="ugrizy")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256, help="the global batch of both")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[], help="key=value for both, e.g. train.recipe=paper")
    parser.add_argument("--per-rank-batch", action="store_true",
                        help="give the job processes x batch (the old per-rank meaning of train.batch_size)")
    parser.add_argument("--json", type=Path, help="append the raw results here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    job_batch = args.batch * (args.processes if args.per_rank_batch else 1)
    results = {"job": [], "plain": []}
    for seed in seeds:
        t0 = time.time()
        results["plain"].append(plain_run(args.workdir, args.band_set, seed, args.batch, args.epochs, args.overrides))
        results["job"].append(job_run(args.workdir, args.band_set, seed, job_batch, args.epochs, args.processes,
                                      args.overrides))
        print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
        print(line(f"  plain, batch {args.batch}", results["plain"][-1]), flush=True)
        print(line(f"  job, {args.processes} ranks, batch {job_batch}", results["job"][-1]), flush=True)
    print(f"\n=== bench/parity.py: {args.band_set}, {args.epochs} epochs, seeds {seeds}, {' '.join(args.overrides)} ===")
    for name, label in (("plain", f"1 plain process, batch {args.batch}"),
                        ("job", f"jobs/train.py, {args.processes} ranks, global batch {job_batch}")):
        s = summary(results[name])
        print(f"{label:<48s} " + "  ".join(f"{k} {m:.4f} ± {sd:.4f}" for k, (m, sd) in s.items()))
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}) + "\n")


if __name__ == "__main__":
    main()
