"""Deep ensemble vs its members, in one plain process on one thread (issue #15 item 5).

Trains M members (seeds seed..seed+M-1: initial weights and batch order, as ``train.ensemble``
gives each member ``train.seed + i``) with ``train.loop.train`` on the same training rows,
combines them with ``model.ensemble.EnsembleMDN`` (the network a model registered with
``train.ensemble=M`` loads as), and prints each member's and the ensemble's test sigma_NMAD,
f_out, mean CRPS and PIT KS, with the CPU seconds of training and of evaluating the test split.

    python bench/ensemble.py WORKDIR/features/ugrizy --members 3 --max-train-rows 8000 \
        --settings '{"max_epochs": 40}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_member(data, val, settings, seed: int, model_config) -> tuple:
    """One member: its initial weights and batch order from ``seed`` (as ``run.train_rank``).

    Returns:
        (the network with its best weights, TrainResult, CPU seconds of training).
    """
    import torch

    from photoz_spark.model import BiLSTMMDN
    from photoz_spark.train.feeding import epoch_batches, eval_batches
    from photoz_spark.train.loop import train

    settings = replace(settings, seed=seed)
    torch.manual_seed(seed)
    model = BiLSTMMDN(model_config)
    cpu = time.process_time()
    result = train(model, lambda e: epoch_batches(data, settings.batch_size, e, seed), lambda: eval_batches(val),
                   settings, steps_per_epoch=len(data) // settings.batch_size)
    return model, result, time.process_time() - cpu


def timed_metrics(model, data) -> tuple[dict, float]:
    from plain import split_metrics  # bench/plain.py, beside this file

    cpu = time.process_time()
    metrics = split_metrics(model, data)
    return metrics, time.process_time() - cpu


def run(features_dir: str, members: int, settings, seed: int = 0, max_train_rows: int | None = None,
        model_overrides: dict | None = None) -> dict:
    """Train ``members`` networks and measure them and their ensemble on the test split."""
    import torch
    from plain import line

    from photoz_spark.model import ModelConfig
    from photoz_spark.model.ensemble import EnsembleMDN
    from photoz_spark.train.feeding import ArrowFeed

    torch.set_num_threads(1)
    feed = ArrowFeed(features_dir)
    data, val, test = feed.load("train"), feed.load("validation"), feed.load("test")
    if max_train_rows and max_train_rows < len(data):  # the same subset as bench/plain.py
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(12345))[:max_train_rows]
        data = type(data)(data.features[keep], data.observed[keep], data.z[keep])
    config = ModelConfig(n_steps=feed.layout["n_steps"], n_channels=feed.layout["n_channels"], **(model_overrides or {}))
    rows, networks = [], []
    for i in range(members):
        model, result, cpu = train_member(data, val, settings, seed + i, config)
        test_m, eval_cpu = timed_metrics(model, test)
        rows.append({"label": f"member {i} (seed {seed + i})", "test": test_m, "val": timed_metrics(model, val)[0],
                     "train_cpu_s": cpu, "test_eval_cpu_s": eval_cpu, "epochs": result.epochs_run,
                     "best_epoch": result.best_epoch})
        networks.append(model)
        print(line(rows[-1]["label"], test_m), f"| {result.epochs_run} ep (best {result.best_epoch}) "
              f"train {cpu:.0f} CPU s, test eval {eval_cpu:.1f} CPU s", flush=True)
    ensemble = EnsembleMDN.from_members(networks)
    test_m, eval_cpu = timed_metrics(ensemble, test)
    rows.append({"label": f"ensemble of {members}", "test": test_m, "val": timed_metrics(ensemble, val)[0],
                 "train_cpu_s": sum(r["train_cpu_s"] for r in rows), "test_eval_cpu_s": eval_cpu})
    print(line(rows[-1]["label"], test_m), f"| train {rows[-1]['train_cpu_s']:.0f} CPU s (sum), "
          f"test eval {eval_cpu:.1f} CPU s", flush=True)
    return {"rows": rows, "train_rows": len(data), "test_rows": len(test), "settings": settings.__dict__}


def main() -> None:
    from photoz_spark.train.loop import TrainSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features_dir")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="{}", help="TrainSettings fields as JSON (default: the paper recipe)")
    parser.add_argument("--model", default="{}", help="ModelConfig fields as JSON (default: conf/train.yaml's model)")
    parser.add_argument("--max-train-rows", type=int, default=None)
    args = parser.parse_args()
    from photoz_spark.config import load_config

    model = {**load_config("train.yaml")["model"], **json.loads(args.model)}
    out = run(args.features_dir, args.members, TrainSettings(**json.loads(args.settings)), args.seed,
              args.max_train_rows, model)
    print("JSON " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
