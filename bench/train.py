"""Training throughput: the whole jobs/train.py path against the raw torch loop, same data and cores.

Run: .venv/bin/python bench/train.py [--rows 40000] [--epochs 3] [--processes 2]

Builds a features dataset (sdss_wise9 by default) from a synthetic matched table, then measures
samples/s of (a) the plain-torch loop in this process on all cores (torch threads = cores),
and (b) jobs/train.py: TorchDistributor with --processes ranks, DDP over gloo, the arrow
feeding backend, MLflow logging and registration. Prints both and the overhead of (b).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))

from photoz_spark import hats
from photoz_spark.toy import toy_matched_table


def raw_loop(features_dir: Path, epochs: int, batch: int) -> float:
    import torch

    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.train.feeding import ArrowFeed, epoch_batches, eval_batches
    from photoz_spark.train.loop import TrainSettings, train

    torch.set_num_threads(os.cpu_count() or 1)
    feed = ArrowFeed(features_dir)
    data, val = feed.load("train"), feed.load("validation")
    model = BiLSTMMDN(ModelConfig(n_steps=feed.layout["n_steps"]))
    rates = []
    train(model, lambda e: epoch_batches(data, batch, e), lambda: eval_batches(val),
          TrainSettings(max_epochs=epochs, batch_size=batch), on_epoch=lambda r: rates.append(r["samples_per_s"]))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--band-set", default="sdss_wise9")
    args = parser.parse_args()
    import build_features
    import train as train_job

    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        table = toy_matched_table(args.rows, ra_range=(150, 160), dec_range=(0, 10))
        hats.write_hats_table(table, wd / "matched" / "dr16q", order=4, ra_col="RA", dec_col="DEC",
                              catalog_name="dr16q")
        build_features.main(["--workdir", tmp, "--band-set", args.band_set])
        raw = raw_loop(wd / "features" / args.band_set, args.epochs, 128)
        t0 = time.perf_counter()
        job = train_job.main(["--workdir", tmp, "--band-set", args.band_set, f"train.max_epochs={args.epochs}",
                              f"train.num_processes={args.processes}", "train.patience=1000"])
        wall = time.perf_counter() - t0
    rate = job["samples_per_s"]
    n_train = job["counts"]["train"]
    print("\n=== bench/train.py ===")
    print(f"data                 {args.rows:,} rows, band set {args.band_set}, train split {n_train:,}, batch 128, "
          f"paper-size model, {os.cpu_count()} cores")
    print(f"raw torch loop       {raw:10,.0f} samples/s (1 process, {os.cpu_count()} threads)")
    print(f"jobs/train.py        {rate:10,.0f} samples/s ({args.processes} DDP ranks via TorchDistributor, gloo)")
    print(f"overhead             {100 * (1 - rate / raw):9.1f} %  (goal <= 20 %)")
    print(f"job wall time        {wall:10.1f} s for {args.epochs} epochs "
          f"(training {job['seconds']['train']:.1f} s; the rest: Spark, checks, evaluation, MLflow)")


if __name__ == "__main__":
    main()
