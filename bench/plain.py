"""One plain PyTorch process training the network on a features catalog (shared by the benches).

``fit`` reads the splits with the library's ArrowFeed, optionally switching the input
representation in memory (the stats.json of a features catalog built by this version holds
what both representations need), trains with ``train.loop.train`` and returns test and
validation metrics (sigma_NMAD, f_out, CRPS, PIT KS), the history and the wall time.

Run alone for one-change-at-a-time comparisons, e.g.:
    python bench/plain.py WORKDIR/features/ugrizy --aggregate flatten --representation asinh_mag
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("sigma_nmad", "f_out", "crps", "pit_ks")


def split_metrics(model, data) -> dict:
    """sigma_NMAD, f_out, mean CRPS and PIT KS of the network's own PDFs on one split."""
    from photoz_spark.train.run import calibration_metrics, evaluate_split

    m, arrays = evaluate_split(model, data)
    m.update(calibration_metrics(arrays, "x"))
    m["pit_ks"] = m.pop("x_pit_ks")
    return {k: m[k] for k in METRICS}


def fit(features_dir: str | Path, settings, model_overrides: dict | None = None,
        representation: str | None = None, threads: int = 1, target_val_crps: float | None = None,
        max_train_rows: int | None = None) -> dict:
    """Train one model in this process and measure it.

    Args:
        features_dir: a features catalog (jobs/build_features.py).
        settings: a ``TrainSettings`` (batch_size is the batch of this single process).
        model_overrides: ModelConfig fields (aggregate, dense, ...).
        representation: ``flux`` | ``asinh_mag`` to override stats.json's; None keeps it.
        threads: torch threads.
        target_val_crps: also record the time at which validation CRPS first reaches this.
        max_train_rows: train on a seeded random subset of this many training rows (a small
            budget on a busy machine); validation and test stay whole.

    Returns:
        {"test": metrics, "val": metrics, "seconds" (wall), "cpu_seconds" (this process's CPU
        time: on a shared machine the fairer clock), "epochs", "best_epoch", "history",
        "time_to_target" (CPU s or None), "val_crps_curve" [(CPU seconds, val CRPS)], "model" (the
        trained network, best weights)}.
        Training time excludes the per-epoch CRPS evaluations.
    """
    import torch

    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.train.feeding import ArrowFeed, epoch_batches, eval_batches
    from photoz_spark.train.loop import train

    torch.set_num_threads(threads)
    feed = ArrowFeed(features_dir)
    if representation:
        feed.stats = {**feed.stats, "representation": representation}
    data, val, test = feed.load("train"), feed.load("validation"), feed.load("test")
    if max_train_rows and max_train_rows < len(data):
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(12345))[:max_train_rows]
        data = type(data)(data.features[keep], data.observed[keep], data.z[keep])
    model = BiLSTMMDN(ModelConfig(n_steps=feed.layout["n_steps"], **(model_overrides or {})))
    if settings.head_init == "quantiles":
        model.init_head(data.z)
    steps = len(data) // settings.batch_size
    curve, t0, c0 = [], time.perf_counter(), time.process_time()

    def on_epoch(record):
        # validation CRPS each epoch, for "time to target"; its cost is not counted as training time
        cpu = time.process_time() - c0 - sum(c[2] for c in curve)
        t_eval = time.process_time()
        crps = split_metrics(model, val)["crps"] if target_val_crps is not None else float("nan")
        model.train()
        curve.append((cpu, crps, time.process_time() - t_eval))

    result = train(model, lambda e: epoch_batches(data, settings.batch_size, e, settings.seed),
                   lambda: eval_batches(val), settings, on_epoch=on_epoch, steps_per_epoch=steps)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0 - sum(c[2] for c in curve)
    reached = [s for s, c, _ in curve if target_val_crps is not None and c <= target_val_crps]
    return {"test": split_metrics(model, test), "val": split_metrics(model, val), "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "epochs": result.epochs_run, "best_epoch": result.best_epoch, "history": result.history,
            "time_to_target": reached[0] if reached else None,
            "val_crps_curve": [(round(s, 2), c) for s, c, _ in curve], "rows": len(data), "model": model}


def line(name: str, m: dict) -> str:
    return (f"{name:<40s} sigma_NMAD {m['sigma_nmad']:.4f}  f_out {100 * m['f_out']:5.2f} %  "
            f"CRPS {m['crps']:.4f}  PIT KS {m['pit_ks']:.3f}")


def main() -> None:
    from photoz_spark.train.loop import TrainSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features_dir")
    parser.add_argument("--aggregate", default="mean")
    parser.add_argument("--representation", default=None)
    parser.add_argument("--settings", default="{}", help="TrainSettings fields as JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    parser.add_argument("--max-train-rows", type=int, default=None)
    args = parser.parse_args()
    settings = TrainSettings(**json.loads(args.settings))
    out = fit(args.features_dir, settings, {"aggregate": args.aggregate}, args.representation, args.threads,
              max_train_rows=args.max_train_rows)
    label = args.label or f"{Path(args.features_dir).name} {args.aggregate} {args.representation}"
    print(line(label + " test", out["test"]), f"| val CRPS {out['val']['crps']:.4f} | {out['epochs']} ep "
          f"(best {out['best_epoch']}) {out['seconds']:.0f} s wall {out['cpu_seconds']:.0f} s CPU", flush=True)
    print("JSON " + json.dumps({"label": label, "settings": json.loads(args.settings), "test": out["test"],
                                "val": out["val"], "seconds": out["seconds"], "cpu_seconds": out["cpu_seconds"], "epochs": out["epochs"],
                                "best_epoch": out["best_epoch"], "rows": out["rows"]}), flush=True)


if __name__ == "__main__":
    main()
