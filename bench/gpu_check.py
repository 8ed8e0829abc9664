"""GPU check of the torch core, for a host with PyTorch + CUDA and no Java, Spark or MLflow.

Run from the repository root:  python bench/gpu_check.py [--device cuda] [--quick]
                               python bench/gpu_check.py --job-path [--device cpu --rows 2000]

--job-path measures what the jobs run (see job_path below); without it, the torch core alone:

1. Trains the paper-size Bi-LSTM-MDN through the project's own loop (photoz_spark.train.loop)
   on synthetic sequences, at batch 128 and 8192, in fp32 and bf16 autocast: samples/s, and
   a check that the validation NLL falls.
2. Scoring kernel: rows/s of network + mixture mean/std (and with median, 68/95 % intervals
   and mode) in fp32, bf16, and the bf16-vs-fp32 agreement of z_mean on the same weights
   and fp16 (goal: within 1e-3; reported, the training checks decide the exit code).
Prints one table; exits non-zero if the loss does not fall.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from photoz_spark.model import BiLSTMMDN, ModelConfig, mdn, mixture
from photoz_spark.model.summaries import estimates
from photoz_spark.train.loop import TrainSettings, evaluate_loss, train

T, C = 14, 2


def synthetic(n: int, device, seed: int = 0):
    """Sequences whose shape encodes z (a smooth 'SED' through 14 bands) plus noise and gaps."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.rand(n, generator=g) * 5.0
    t = torch.arange(T, dtype=torch.float32)
    flux = torch.sin(z[:, None] * (0.6 + 0.05 * t) + 0.3 * t) + 0.1 * torch.randn(n, T, generator=g)
    err = 0.1 + 0.05 * torch.rand(n, T, generator=g)
    observed = torch.rand(n, T, generator=g) > 0.05
    feats = torch.stack([flux, err], dim=-1) * observed[..., None]
    return feats.reshape(n, T * C).to(device), observed.to(device), z.to(device)


def batches(data, batch: int, steps: int, offset: int = 0):
    features, observed, z = data
    n = len(z)
    for i in range(steps):
        start = ((offset + i) * batch) % max(n - batch + 1, 1)
        yield features[start:start + batch], observed[start:start + batch], z[start:start + batch]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_check(device, batch: int, autocast: str, steps: int, epochs: int, data, val) -> dict:
    torch.manual_seed(0)
    model = BiLSTMMDN(ModelConfig(n_steps=T)).to(device)
    settings = TrainSettings(max_epochs=epochs, batch_size=batch, autocast=autocast, patience=epochs + 1)
    val_iter = lambda: batches(val, 8192, len(val[2]) // 8192)
    before = evaluate_loss(model, val_iter(), device, autocast)
    rates = []

    def on_epoch(record):
        sync(device)
        rates.append(record["samples_per_s"])

    result = train(model, lambda e: batches(data, batch, steps, offset=e * steps), val_iter, settings,
                   device=device, on_epoch=on_epoch)
    return {"batch": batch, "autocast": autocast, "samples_per_s": max(rates[1:] or rates),
            "val_nll_before": before, "val_nll_after": result.best_val_loss, "model": model}


@torch.inference_mode()
def score(model, data, device, autocast: str, full: bool, chunk: int = 65536):
    features, observed, _ = data
    model.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    means = []
    sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(features), chunk):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, mu, sigma = model(features[start:start + chunk], observed[start:start + chunk])
        w, mu, sigma = mixture(logits, mu, sigma)
        means.append(mdn.mean(w, mu))
        mdn.std(w, mu, sigma)
        if full:  # every summary the scoring job writes, through the same function
            estimates(w.float(), mu.float(), sigma.float())
    sync(device)
    return len(features) / (time.perf_counter() - t0), torch.cat(means)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test of this script)")
    parser.add_argument("--job-path", action="store_true",
                        help="the jobs' own code: a scoring task on an all14 pixel file, a training rank")
    parser.add_argument("--rows", type=int, default=2_000_000, help="--job-path: rows of the pixel file scored")
    parser.add_argument("--train-rows", type=int, default=0,
                        help="--job-path: rows of the toy training catalog (0: min(rows, 400k))")
    parser.add_argument("--epochs", type=int, default=0, help="--job-path: epochs per recipe (0: 10 on CUDA, 3 on CPU)")
    parser.add_argument("--fast-batch", type=int, default=0, help="--job-path: the fast recipe's batch (0: 8192 on CUDA, 512 on CPU)")
    parser.add_argument("--fast-lr", type=float, default=4e-3, help="--job-path: the fast recipe's learning rate")
    parser.add_argument("--target-nll", type=float, default=None,
                        help="--job-path: validation NLL to time (default: the worst recipe's best, reached by all)")
    parser.add_argument("--precision", default="auto", help="--job-path: score.precision (auto | fp32 | bf16 | fp16)")
    parser.add_argument("--batch-size", type=int, default=65_536, help="--job-path: score.batch_size (rows per read batch)")
    parser.add_argument("--workdir", default="", help="--job-path: where to write (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.job_path:
        from bench.job_path import run_job_path  # bench/job_path.py, beside this file
        return run_job_path(args)
    device = torch.device(args.device)
    quick = args.quick
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    data = synthetic(20_000 if quick else 2_000_000, device)
    val = synthetic(8192 * (1 if quick else 8), device, seed=1)
    configs = [(128, "none"), (128, "bf16"), (8192, "none"), (8192, "bf16")]
    ok = True
    print(f"{'batch':>6} {'precision':>9} {'samples/s':>12} {'val NLL before':>15} {'after':>8}")
    trained = None
    for batch, autocast in configs:
        if quick and batch > 1024:
            batch = 512
        steps = 20 if quick else (300 if batch == 128 else 100)
        epochs = 2 if quick else 3
        r = train_check(device, batch, autocast, steps, epochs, data, val)
        falls = r["val_nll_after"] < r["val_nll_before"] - 0.2
        ok &= falls
        print(f"{batch:>6} {autocast if autocast != 'none' else 'fp32':>9} {r['samples_per_s']:>12,.0f} "
              f"{r['val_nll_before']:>15.3f} {r['val_nll_after']:>8.3f} {'' if falls else '  LOSS DID NOT FALL'}")
        if batch >= 512 and autocast == "none":
            trained = r["model"]
    rows = synthetic(100_000 if quick else 4_000_000, device, seed=2)
    print(f"\nscoring kernel ({len(rows[2]):,} rows)")
    results = {}
    for autocast in ("none", "bf16", "fp16"):
        for full in (False, True):
            score(trained, (rows[0][:70000], rows[1][:70000], None), device, autocast, full)  # warm-up
            rate, z_mean = score(trained, rows, device, autocast, full)
            results[(autocast, full)] = z_mean
            what = "mean+std" + (" -> all summaries (estimates())" if full else "")
            print(f"  {autocast if autocast != 'none' else 'fp32':>4} {what:<38} {rate:>14,.0f} rows/s")
    for low in ("bf16", "fp16"):
        diff = (results[(low, False)] - results[("none", False)]).abs().float()
        agree = float(diff.quantile(0.99)) < 1e-3
        print(f"  {low} vs fp32 z_mean: median |diff| {float(diff.median()):.2e}, p99 {float(diff.quantile(0.99)):.2e}, "
              f"max {float(diff.max()):.2e} -> {'within' if agree else 'NOT within'} 1e-3 at p99")
    print("\nALL CHECKS PASSED" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
