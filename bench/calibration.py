"""Recalibration methods side by side: raw mixture vs PIT map vs calibrated mixture (issue #15, items 6-7).

Run: python bench/calibration.py WORKDIR/features/ugrizy [--epochs 30] [--model-dir DIR]
         [--throughput-rows 50000] [--threads 1]

Trains one model in this process (bench/plain.py, the recipe and model of conf/train.yaml;
``--model-dir`` keeps its weights so a rerun skips training), then on the same network:
fits ``pit_map`` (train.calibration_knots) and ``mixture`` (train.calibration_nodes) on the
validation split as ``jobs/train.py`` does, and prints per method on the test split: PIT KS,
mean CRPS, sigma_NMAD and f_out of the PDF mean, mean zConf, the fit's CPU seconds, and the
throughput of the scoring summaries (``summaries.estimates`` on the test mixtures tiled to
``--throughput-rows``, 8192-row batches as the scoring job's; rows per CPU second of this
process, so a loaded machine gives the same ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

BATCH = 8192


def trained_model(features_dir: Path, epochs: int, threads: int, model_dir: Path | None):
    """The network trained on ``features_dir`` (or loaded from ``model_dir``/weights.pt when there)."""
    import torch

    from photoz_spark.config import load_config
    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.train.run import settings_from

    config = load_config("train.yaml", overrides=[f"train.max_epochs={epochs}"])
    fields = ModelConfig.__dataclass_fields__
    overrides = {k: v for k, v in config["model"].items() if k in fields}
    layout = json.loads((features_dir / "layout.json").read_text())
    weights = model_dir / "weights.pt" if model_dir else None
    if weights is not None and weights.is_file():
        model = BiLSTMMDN(ModelConfig(n_steps=layout["n_steps"], **overrides))
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model, json.loads((model_dir / "fit.json").read_text()), config["train"]
    from plain import fit

    out = fit(features_dir, settings_from(config["train"]), overrides, threads=threads)
    info = {k: out[k] for k in ("epochs", "best_epoch", "cpu_seconds", "rows")}
    if model_dir:
        model_dir.mkdir(parents=True, exist_ok=True)
        torch.save(out["model"].state_dict(), weights)
        (model_dir / "fit.json").write_text(json.dumps(info))
    return out["model"], info, config["train"]


def summaries_throughput(mixture, calibration, rows: int) -> dict:
    """CPU seconds and rows per CPU second of the scoring summaries, calibration applied as scoring does."""
    import torch

    from photoz_spark.model.calibration import calibrated_mixture
    from photoz_spark.model.summaries import estimates

    reps = -(-rows // len(mixture[0]))
    w, mu, sigma = (torch.cat([t.float()] * reps)[:rows] for t in mixture)
    c0 = time.process_time()
    with torch.inference_mode():
        for start in range(0, rows, BATCH):
            sl = slice(start, start + BATCH)
            estimates(*calibrated_mixture(w[sl], mu[sl], sigma[sl], calibration))
    cpu = time.process_time() - c0
    return {"summaries_cpu_s": cpu, "summaries_rows_per_cpu_s": rows / cpu}


def compare(model, features_dir: Path, train_cfg: dict, throughput_rows: int) -> list[dict]:
    """One row per method (raw, pit_map, mixture): test-split metrics, fit cost and summaries throughput."""
    import numpy as np

    from photoz_spark.metrics import all_metrics
    from photoz_spark.model import calibration as cal
    from photoz_spark.train.feeding import ArrowFeed
    from photoz_spark.train.run import evaluate_split

    feed = ArrowFeed(features_dir)
    _, val = evaluate_split(model, feed.load("validation"), keep_mixture=True)
    test_data = feed.load("test")
    rows = []
    for method in ("raw", "pit_map", "mixture"):
        c0 = time.process_time()
        calibration = None if method == "raw" else cal.fit(
            method, *val["mixture"], val["z_spec"], val["pit"], int(train_cfg["calibration_knots"]),
            int(train_cfg["calibration_nodes"]))
        fit_cpu = time.process_time() - c0
        _, test = evaluate_split(model, test_data, calibration, keep_mixture=True)
        key = (lambda k: k) if calibration is None else (lambda k: f"cal_{k}")
        m = all_metrics(test[key("z_phot")], test["z_spec"], test[key("crps")], test[key("pit")])
        rows.append({"method": method, "n_test": len(test["z_spec"]), "pit_ks": m["pit_ks"], "crps": m["crps"],
                     "sigma_nmad": m["sigma_nmad"], "f_out": m["f_out"], "z_conf_mean": float(np.mean(test[key("z_conf")])),
                     "fit_cpu_s": fit_cpu, **summaries_throughput(test["mixture"], calibration, throughput_rows),
                     "calibration": calibration.to_dict() if calibration is not None and method == "mixture" else None})
    return rows


def print_table(rows: list[dict]) -> None:
    raw_rate = rows[0]["summaries_rows_per_cpu_s"]
    print(f"{'method':<9} {'N test':>6} {'PIT KS':>7} {'CRPS':>7} {'σ_NMAD':>7} {'f_out':>7} {'<zConf>':>7} "
          f"{'fit CPU s':>9} {'summ. rows/CPU s':>16} {'× raw':>6}")
    for r in rows:
        print(f"{r['method']:<9} {r['n_test']:>6} {r['pit_ks']:>7.3f} {r['crps']:>7.4f} {r['sigma_nmad']:>7.4f} "
              f"{100 * r['f_out']:>6.2f}% {r['z_conf_mean']:>7.3f} {r['fit_cpu_s']:>9.2f} "
              f"{r['summaries_rows_per_cpu_s']:>16,.0f} {r['summaries_rows_per_cpu_s'] / raw_rate:>6.2f}")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--model-dir", type=Path, default=None, help="keep/reuse the trained weights here")
    parser.add_argument("--throughput-rows", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, info, train_cfg = trained_model(args.features_dir, args.epochs, args.threads, args.model_dir)
    print(f"model: {info['epochs']} epochs (best {info['best_epoch']}), {info['rows']:,} training rows, "
          f"{info['cpu_seconds']:.0f} CPU s", flush=True)
    rows = compare(model, args.features_dir, train_cfg, args.throughput_rows)
    print_table(rows)
    print("JSON " + json.dumps({"model": info, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
