"""The device paths of #17, each against its plain twin, side by side in one run (PyTorch + pyarrow only).

Run from the repository root:  python bench/device_paths.py [--device cuda] [--rows 1000000]
                               python bench/device_paths.py --device cpu --rows 20000 --quick

1. Scoring task (``hats``' task body + ``scoring.task.scorer``, a random-weight model of the
   conf/train.yaml architecture, one all14 pixel file): overlap off vs on (reader, scoring and
   writer threads), alternated ``--repeats`` times; rows/s by the wall clock and by the process's
   CPU time (all threads). And the Parquet write of the three mixture columns as variable-size
   vs fixed-size lists (the output's encoding before and after #17).
2. Training feeding (``train.feeding.epoch_source``): host / pinned (prefetch thread) / device
   placement, the same batches: samples/s of a full training epoch of the paper network.
3. Training precision (``train.autocast``): fp32 vs auto (bf16, or fp16 + GradScaler): samples/s.
4. Checkpoints: seconds an epoch waits for a synchronous save vs the background writer.

Prints one table. Wall-clock numbers on a loaded host are noisy: compare the pairs, measured in
alternation, not absolute values (CPU seconds are given too).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from photoz_spark import hats
from photoz_spark.bands import load_bands
from photoz_spark.config import load_config
from photoz_spark.features.sequencing import band_columns
from photoz_spark.flags import FLAGS_COLUMN
from photoz_spark.toy import toy_matched_table

BAND_SET = "all14"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Clock:
    """Wall and process CPU seconds (every thread) of a block."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def make_model(directory: Path, sample: pa.Table) -> int:
    """A random-weight model of the configured architecture on all14, saved as the registry does; K."""
    from photoz_spark.features.sequencing import sequence
    from photoz_spark.features.stats import compute_stats
    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.registry.artifact import save_model_files

    registry = load_bands()
    band_set = registry.band_set(BAND_SET)
    raw, observed, _ = sequence(sample, band_set, registry)
    cfg = {"n_steps": len(band_set), "n_channels": 2, **load_config("train.yaml")["model"]}
    torch.manual_seed(0)
    layout = {"band_set": band_set.name, "bands": band_set.names, "n_steps": len(band_set), "n_channels": 2}
    save_model_files(directory, BiLSTMMDN(ModelConfig(**cfg)).state_dict(),
                     {"model_config": cfg, "layout": layout, "stats": compute_stats(raw, observed, band_set)})
    return cfg["n_components"]


def score_task(model_dir: Path, source: Path, out: Path, device: str, overlap: str, batch_size: int) -> dict:
    """One pass of the scoring task over every pixel of ``source`` (as a Spark task runs it)."""
    from photoz_spark.registry.resolve import ModelFiles
    from photoz_spark.scoring import task

    cat = load_bands().catalogs["dr16q"]
    keep = tuple(dict.fromkeys((cat.id, cat.ra, cat.dec, hats.HEALPIX_COLUMN)))
    band_set = load_bands().band_set(BAND_SET)
    columns = list(dict.fromkeys([*keep, *band_columns(band_set), FLAGS_COLUMN]))
    runtime = task.Runtime(device=device, precision="auto", overlap=overlap)
    fn = task.scorer(SimpleNamespace(value=ModelFiles.from_dir(model_dir)), keep, None, runtime,
                     SimpleNamespace(add=lambda item: None))
    order = int(hats.read_properties(source)["hats_order"])
    shutil.rmtree(out, ignore_errors=True)
    (out / f"Norder={order}").mkdir(parents=True)
    mapper = hats._executor_pixel_mapper(str(source / hats.DATASET_DIR), str(out), order, order,
                                         hats._pixel_file_reader(fn, columns, batch_size))
    tasks = hats._tasks(source, order)  # map_hats' tasks, fed as its partitions feed them
    with Clock() as clock:
        rows = sum(report["n_rows"] for report in mapper(iter(tasks)))
        sync(device)
    return {"rows": rows, "wall": clock.wall, "cpu": clock.cpu}


def list_write(rows: int, k: int, out: Path) -> dict:
    """Seconds to write three [rows, k] mixture columns as variable- and fixed-size lists."""
    values = np.random.default_rng(0).random((rows, k), dtype=np.float32)
    offsets = pa.array(np.arange(0, (rows + 1) * k, k, dtype=np.int32))
    flat = pa.array(values.reshape(-1))
    tables = {"list": pa.table({f"c{i}": pa.ListArray.from_arrays(offsets, flat) for i in range(3)}),
              "fixed_size_list": pa.table({f"c{i}": pa.FixedSizeListArray.from_arrays(flat, k) for i in range(3)})}
    result = {name: [] for name in tables}
    for _ in range(3):
        for name, table in tables.items():
            with Clock() as clock:
                pq.write_table(table, out / f"{name}.parquet")
            result[name].append(clock.cpu)
    return {name: min(v) for name, v in result.items()}


def training_data(rows: int):
    """Standardised-looking toy training tensors of the all14 shape."""
    from photoz_spark.train.feeding import FeatureData

    g = torch.Generator().manual_seed(0)
    z = torch.rand(rows, generator=g) * 5
    flux = torch.sin(z[:, None] * (0.6 + 0.05 * torch.arange(14.0)) + 0.3 * torch.arange(14.0))
    feats = torch.stack([flux + 0.1 * torch.randn(rows, 14, generator=g), torch.full_like(flux, 0.1)], -1)
    return FeatureData(feats.reshape(rows, 28).contiguous(), torch.rand(rows, 14, generator=g) > 0.05, z)


class _Shard:
    def __init__(self, data):
        self.data = data

    def train_data(self, rank, world):
        return self.data


def train_epoch(data, device: str, how: str, autocast: str, batch: int, epochs: int) -> dict:
    """Samples/s of the project's loop on one rank fed by ``how`` (median over epochs after the first)."""
    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.train import feeding
    from photoz_spark.train.loop import TrainSettings, train

    dev = torch.device(device)
    real = feeding.ArrowFeed
    feeding.ArrowFeed = _Shard  # epoch_source places an ArrowFeed's shard: the toy shard stands in
    try:
        source, used = feeding.epoch_source(_Shard(data), 0, 1, batch, 0, dev, how=how)
    finally:
        feeding.ArrowFeed = real
    torch.manual_seed(0)
    model = BiLSTMMDN(ModelConfig(n_steps=14, **{k: v for k, v in load_config("train.yaml")["model"].items()}))
    val = [(data.features[:4096], data.observed[:4096], data.z[:4096])]
    settings = TrainSettings(max_epochs=epochs, batch_size=batch, patience=epochs + 1, autocast=autocast)
    with Clock() as clock:
        result = train(model, source, lambda: val, settings, device=dev)
        sync(device)
    rates = [h["samples_per_s"] for h in result.history]
    return {"how": used, "precision": result.precision, "samples_per_s": float(np.median(rates[1:] or rates)),
            "cpu_per_sample_us": 1e6 * clock.cpu / max(len(data) // batch * batch * epochs, 1)}


def checkpoint_wait(device: str, out: Path, repeats: int = 5) -> dict:
    """Seconds an epoch waits per checkpoint of the paper network + Adam state: synchronous vs background."""
    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.train.loop import CheckpointWriter, _save_checkpoint

    model = BiLSTMMDN(ModelConfig(n_steps=14, **load_config("train.yaml")["model"])).to(device)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 28, device=device), torch.ones(8, 14, dtype=torch.bool, device=device))[0].sum().backward()
    opt.step()
    state = lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "loop": {"best_state": model.state_dict(), "history": []}}
    sync_s, bg_s = [], []
    writer = CheckpointWriter(out / "bg.pt")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _save_checkpoint(out / "sync.pt", {k: v for k, v in state().items()})
        sync_s.append(time.perf_counter() - t0)
        time.sleep(0.2)  # the "epoch" the background write overlaps with
        t0 = time.perf_counter()
        writer.save(state())
        bg_s.append(time.perf_counter() - t0)
        time.sleep(0.2)
    writer.close()
    return {"sync_s": float(np.median(sync_s)), "background_s": float(np.median(bg_s))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the scored pixel file")
    parser.add_argument("--train-rows", type=int, default=0, help="training shard rows (0: min(rows, 400k))")
    parser.add_argument("--batch-size", type=int, default=65_536, help="score.batch_size")
    parser.add_argument("--repeats", type=int, default=3, help="alternated passes of each scoring variant")
    parser.add_argument("--quick", action="store_true", help="tiny training sizes (a CPU smoke test)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: score,lists,feed,precision,checkpoint")
    args = parser.parse_args(argv)
    device, skip = args.device, set(filter(None, args.skip.split(",")))
    if device == "cpu":
        torch.set_num_threads(1)  # a scoring task's CPU budget; the training rows below too
    root = Path(tempfile.mkdtemp(prefix="photoz-device-paths-"))
    rows_out = []
    try:
        source = root / "catalogs" / "dr16q"
        k = make_model(root / "model", toy_matched_table(2000, seed=1))
        if "score" not in skip:
            hats.write_hats_table(toy_matched_table(args.rows, seed=7), source, order=0, ra_col="RA",
                                  dec_col="DEC", catalog_name="dr16q")
            score_task(root / "model", source, root / "scores", device, "off", args.batch_size)  # warm-up (model cache)
            runs = {"off": [], "on": []}
            for _ in range(args.repeats):
                for overlap, results in runs.items():
                    results.append(score_task(root / "model", source, root / "scores", device, overlap,
                                              args.batch_size))
            for overlap, results in runs.items():
                best = min(results, key=lambda r: r["wall"])
                rows_out.append((f"score task, overlap {overlap}", f"{best['rows'] / best['wall']:,.0f} rows/s",
                                 f"{best['rows'] / best['cpu']:,.0f} rows/CPU-s"))
        if "lists" not in skip:
            lists = list_write(args.rows, k, root)
            for name, cpu in lists.items():
                rows_out.append((f"mixture columns written as {name}", f"{cpu:.3f} CPU s", f"{args.rows:,} rows"))
        train_rows = args.train_rows or (20_000 if args.quick else min(args.rows, 400_000))
        data = training_data(train_rows)
        batch = 512 if args.quick or device == "cpu" else 8192
        epochs = 2 if args.quick else 4
        if "feed" not in skip:
            for how in (["host", "pinned"] if device == "cpu" else ["host", "pinned", "device"]):
                r = train_epoch(data, device, how, "none", batch, epochs)
                rows_out.append((f"train feed {how} (b{batch}, fp32)", f"{r['samples_per_s']:,.0f} samples/s",
                                 f"{r['cpu_per_sample_us']:.0f} CPU us/sample"))
        if "precision" not in skip:
            for autocast in ("none", "auto"):
                r = train_epoch(data, device, "device" if device != "cpu" else "host", autocast, batch, epochs)
                rows_out.append((f"train autocast {autocast} -> {r['precision']}", f"{r['samples_per_s']:,.0f} samples/s",
                                 f"{r['cpu_per_sample_us']:.0f} CPU us/sample"))
        if "checkpoint" not in skip:
            c = checkpoint_wait(device, root)
            rows_out.append(("checkpoint: epoch waits (sync)", f"{1e3 * c['sync_s']:.1f} ms", ""))
            rows_out.append(("checkpoint: epoch waits (background)", f"{1e3 * c['background_s']:.1f} ms", ""))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    print(f"\ndevice paths on {name}, torch {torch.__version__}, {args.rows:,} rows scored")
    for what, value, extra in rows_out:
        print(f"  {what:<42} {value:>22}  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
