"""Training: throughput of the job path, and the fast recipe against the paper's, side by side.

Throughput: .venv/bin/python bench/train.py [--rows 40000] [--epochs 3] [--processes 2]

Builds a features dataset (sdss_wise9 by default) from a synthetic matched table, then measures
samples/s of (a) the plain-torch loop in this process on all cores (torch threads = cores),
and (b) jobs/train.py: TorchDistributor with --processes ranks, DDP over gloo, the arrow
feeding backend, MLflow logging and registration. Prints both and the overhead of (b).

Recipes: .venv/bin/python bench/train.py --recipes FEATURES_DIR [--paper-epochs 30] [--seeds 0] [--max-train-rows N]
    [--fast key=value ...]

Trains the paper recipe (train.recipe=paper, capped at --paper-epochs) and the fast recipe
(conf/train.yaml's, with --fast overrides) in one plain process each (bench/plain.py) on a
features catalog, records validation CRPS after every epoch, and prints the time the fast
recipe needs to reach the paper run's best validation CRPS (training time only, the per-epoch
CRPS evaluations excluded), the speed-up, and the final test metrics of both. Time is this
process's CPU time (one torch thread): on a shared machine wall time measures the neighbours'
load; on a quiet single core the two agree. Wall time is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def recipe_settings(recipe: str, overrides: list[str]):
    from photoz_spark.config import load_config
    from photoz_spark.train.run import settings_from

    config = load_config("train.yaml", overrides=[f"train.recipe={recipe}", *overrides])
    return settings_from(config["train"]), config["model"]


def compare_recipes(features_dir: Path, paper_epochs: int, seeds: list[int], fast_overrides: list[str],
                    model_overrides: list[str], max_train_rows: int | None = None) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from plain import fit, line

    from photoz_spark.model import ModelConfig

    fields = ModelConfig.__dataclass_fields__
    for seed in seeds:
        paper, model = recipe_settings("paper", [f"train.max_epochs={paper_epochs}", f"train.seed={seed}",
                                                 *model_overrides])
        fast, _ = recipe_settings("fast", [f"train.seed={seed}", *fast_overrides, *model_overrides])
        model = {k: v for k, v in model.items() if k in fields}
        a = fit(features_dir, paper, model, target_val_crps=float("inf"), max_train_rows=max_train_rows)
        target = min(c for _, c in a["val_crps_curve"])
        t_paper = next(s for s, c in a["val_crps_curve"] if c == target)
        b = fit(features_dir, fast, model, target_val_crps=target, max_train_rows=max_train_rows)
        print(f"\n=== bench/train.py --recipes: {features_dir.name}, {a['rows']:,} training rows, seed {seed}, "
              f"model {model} ===")
        print(f"paper  {paper}")
        print(f"fast   {fast}")
        print(f"paper: best val CRPS {target:.4f} at {t_paper:.0f} CPU s (epoch {a['best_epoch']}), "
              f"{a['epochs']} epochs in {a['cpu_seconds']:.0f} CPU s ({a['seconds']:.0f} s wall)")
        reached = b["time_to_target"]
        best_fast = min(c for _, c in b["val_crps_curve"])
        print(f"fast:  best val CRPS {best_fast:.4f}; reaches {target:.4f} at "
              + (f"{reached:.0f} CPU s: {t_paper / reached:.1f}x faster than the paper run reached it, "
                 f"{a['cpu_seconds'] / reached:.1f}x less than the paper run's whole time"
                 if reached else "never") + f"; {b['epochs']} epochs in {b['cpu_seconds']:.0f} CPU s "
              f"({b['seconds']:.0f} s wall)")
        print(line("paper recipe, test", a["test"]))
        print(line("fast recipe, test", b["test"]))
        print("JSON " + json.dumps({"seed": seed, "paper": {k: a[k] for k in ("test", "val", "seconds", "cpu_seconds", "epochs",
                                                                                "best_epoch", "val_crps_curve")},
                                    "fast": {k: b[k] for k in ("test", "val", "seconds", "cpu_seconds", "epochs", "best_epoch",
                                                               "val_crps_curve", "time_to_target")},
                                    "target": target, "fast_overrides": fast_overrides}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--band-set", default="sdss_wise9")
    parser.add_argument("--recipes", type=Path, metavar="FEATURES_DIR", help="compare the paper and fast recipes")
    parser.add_argument("--paper-epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--fast", nargs="*", default=[], help="train.* overrides of the fast recipe")
    parser.add_argument("--model", nargs="*", default=[], help="model.* overrides for both recipes")
    parser.add_argument("--max-train-rows", type=int, default=None, help="a seeded subset of the training split")
    args = parser.parse_args()
    if args.recipes:
        compare_recipes(args.recipes, args.paper_epochs, [int(s) for s in args.seeds.split(",")], args.fast,
                        args.model, args.max_train_rows)
        return
    from photoz_spark.jobs import build_features
    from photoz_spark.jobs import train as train_job

    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        table = toy_matched_table(args.rows, ra_range=(150, 160), dec_range=(0, 10))
        hats.write_hats_table(table, wd / "matched" / "dr16q", order=4, ra_col="RA", dec_col="DEC",
                              catalog_name="dr16q")
        build_features.main(["--workdir", tmp, "--band-set", args.band_set])
        raw = raw_loop(wd / "features" / args.band_set, args.epochs, 128)
        t0 = time.perf_counter()
        job = train_job.main(["--workdir", tmp, "--band-set", args.band_set, f"train.max_epochs={args.epochs}",
                              f"train.num_processes={args.processes}", "train.patience=1000",
                              "train.recipe=paper", f"train.batch_size={128 * args.processes}"])
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
