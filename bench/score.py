"""Scoring throughput: jobs/score_catalog.py's stage end to end against raw torch inference.

Run: .venv/bin/python bench/score.py [--rows 10000000] [--band-set all14] [--batch-size 8192]

Writes a synthetic HATS catalog of --rows rows holding the band set's native columns (toy
photometry, ids, coordinates over ~3600 deg^2), builds a model of the default conf/train.yaml
architecture (random weights: the speed does not depend on them) and measures, on the same
cores in the same run:
  (a) raw torch: the network's forward pass on pre-standardised tensors, torch threads = cores,
      in calls of the kernel's CPU chunk (registry.artifact.cpu_chunk_rows) and of --batch-size rows; the
      faster is the reference;
  (b) the kernel without Spark: score_batch (features + network + every summary), one process;
  (c) the Spark stage (score_catalog: hats.map_hats, one mapInArrow task per pixel that reads,
      scores and writes that pixel's file; staging and commit) on local[cores], one torch thread
      per task.
Prints rows/s of each, the ratio (c)/(a) (goal >= 0.8) and peak memory: this process's max RSS
and, with psutil, the peak summed RSS of the whole process tree (JVM and Python workers).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import pyarrow as pa

from photoz_spark import hats
from photoz_spark.bands import load_bands
from photoz_spark.toy import toy_matched_table


def catalog(n: int, band_set, chunk: int = 250_000) -> pa.Table:
    """n toy rows with only the columns scoring reads (ids, coordinates, flags, band columns)."""
    keep = ["THING_ID", "RA", "DEC", "flags", hats.HEALPIX_COLUMN,
            *[c for b in band_set.bands for c in (b.flux, b.err)]]
    parts = []
    for i, start in enumerate(range(0, n, chunk)):
        t = toy_matched_table(min(chunk, n - start), seed=i, ra_range=(0.0, 90.0), dec_range=(-20.0, 20.0))
        t = t.select(keep)
        parts.append(t.set_column(0, "THING_ID", pa.array(np.arange(start, start + t.num_rows, dtype=np.int64))))
    return pa.concat_tables(parts)


def make_model(directory: Path, band_set, sample: pa.Table) -> None:
    import torch

    from photoz_spark.config import load_config
    from photoz_spark.features.sequencing import sequence
    from photoz_spark.features.stats import compute_stats
    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.registry.artifact import save_model_files

    registry = load_bands()
    raw, observed, _ = sequence(sample, band_set, registry)
    cfg = {"n_steps": len(band_set), "n_channels": 2, **load_config("train.yaml")["model"]}
    torch.manual_seed(0)
    net = BiLSTMMDN(ModelConfig(**cfg))
    layout = {"band_set": band_set.name, "bands": band_set.names, "n_steps": len(band_set), "n_channels": 2}
    save_model_files(directory, net.state_dict(),
                     {"model_config": cfg, "layout": layout, "stats": compute_stats(raw, observed, band_set)})


class TreeMemory:
    """Peak summed RSS of this process and its descendants, sampled every 0.2 s (needs psutil)."""

    def __init__(self):
        try:
            import psutil
        except ImportError:
            self.psutil, self.peak = None, None
            return
        self.psutil, self.peak, self._stop = psutil, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        me = self.psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except self.psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def stop(self):
        if self.psutil:
            self._stop.set()
            self._thread.join()
        return self.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--band-set", default="all14")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--order", type=int, default=3, help="HEALPix order of the synthetic catalog")
    ap.add_argument("--raw-rows", type=int, default=200_000, help="rows timed for (a) and (b)")
    args = ap.parse_args()

    import torch

    from photoz_spark.cli import Workdir
    from photoz_spark.config import load_config
    from photoz_spark.features.sequencing import sequence
    from photoz_spark.features.stats import standardise
    from photoz_spark.registry.artifact import PhotozModel, cpu_chunk_rows
    from photoz_spark.registry.resolve import ModelFiles
    from photoz_spark.scoring import score_batch
    from photoz_spark.scoring.run import score_catalog
    from photoz_spark.spark import get_spark

    registry = load_bands()
    band_set = registry.band_set(args.band_set)
    memory = TreeMemory()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        wd = Workdir(Path(tmp))
        t = time.time()
        table = catalog(args.rows, band_set)
        hats.write_hats_table(table, wd.matched / "bench", order=args.order, ra_col="RA", dec_col="DEC",
                              catalog_name="bench")
        make_model(wd.root / "model", band_set, table.slice(0, 50_000))
        print(f"data          {args.rows:,} rows, band set {band_set.name} ({len(band_set)} bands), "
              f"written in {time.time() - t:.1f} s")
        model = PhotozModel(wd.root / "model", registry)
        sample = table.slice(0, min(args.raw_rows, args.rows))
        del table

        # (a) raw torch: forward pass only, on tensors prepared beforehand
        torch.set_num_threads(args.cores)
        raw, observed, _ = sequence(sample, model.band_set, registry)
        x = torch.from_numpy(standardise(raw, observed, model.meta["stats"]))
        m = torch.from_numpy(observed)
        raw_rates = {}
        with torch.inference_mode():
            model.network(x[:1024], m[:1024])  # warm-up
            for chunk in dict.fromkeys((cpu_chunk_rows(model.network.config), args.batch_size)):
                t = time.time()
                for s in range(0, len(x), chunk):
                    model.network(x[s:s + chunk], m[s:s + chunk])
                raw_rates[chunk] = len(x) / (time.time() - t)
        raw_chunk, raw_rate = max(raw_rates.items(), key=lambda item: item[1])  # the fairer, faster one
        # (b) the kernel, no Spark
        batch = sample.combine_chunks().to_batches()[0] if sample.num_rows else None
        t = time.time()
        for s in range(0, sample.num_rows, args.batch_size):
            score_batch(model, batch.slice(s, args.batch_size), ["THING_ID"])
        kernel_rate = sample.num_rows / (time.time() - t)
        del x, m, raw, observed, sample, batch

        # (c) the Spark stage
        config = load_config("score.yaml", overrides=[
            f"spark.master=local[{args.cores}]", "spark.driver_memory=4g", "spark.log_level=ERROR",
            "score.input=matched/bench", "score.left_catalog=dr16q", f"score.batch_size={args.batch_size}"])
        spark = get_spark(config, extra_conf={"spark.ui.enabled": False})
        files = ModelFiles.from_dir(wd.root / "model", "bench", "0")
        t = time.time()
        summary = score_catalog(spark, config, registry, wd, files, band_set)
        spark_s = time.time() - t
        spark.stop()
    tree_peak = memory.stop()
    spark_rate = args.rows / spark_s
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"(a) raw torch forward      {raw_rate:12,.0f} rows/s  ({args.cores} threads, calls of {raw_chunk} rows; "
          + ", ".join(f"{c} rows: {r:,.0f}" for c, r in raw_rates.items()) + ")")
    print(f"(b) score_batch, no Spark  {kernel_rate:12,.0f} rows/s  (features + network + summaries)")
    print(f"(c) Spark stage end to end {spark_rate:12,.0f} rows/s  ({args.rows:,} rows in {spark_s:.1f} s, "
          f"local[{args.cores}], {summary['partitions']} output partitions)")
    print(f"ratio (c)/(a) {spark_rate / raw_rate:.2f}x   (c)/(b) {spark_rate / kernel_rate:.2f}x   goal >= 0.8x")
    print(f"peak memory   driver Python {own:,.0f} MiB; largest child (JVM or worker) {children:,.0f} MiB"
          + (f"; process tree {tree_peak / 2**20:,.0f} MiB" if tree_peak else "; install psutil for the tree total"))
    print(f"os            {os.cpu_count()} CPUs visible, torch {torch.__version__}")


if __name__ == "__main__":
    main()
