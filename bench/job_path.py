"""``bench/gpu_check.py --job-path``: the jobs' own code on one device, without Java, Spark or MLflow.

1. Training, as one TorchDistributor rank runs it: a toy all14 features catalog (the
   build_features library functions, written with pyarrow) and ``train.run.train_rank`` — the
   rank's ArrowFeed, the project's loop with a checkpoint every epoch, history and best weights —
   at batch 128 (the paper's recipe) and at a fast recipe (a big batch). Samples/s, and the wall
   time from the rank's start to a target validation NLL (default: the worst recipe's best, so
   every recipe reaches it).
2. A calibrated model (PIT recalibration fitted on the validation split, as ``train.recalibrate``)
   saved as the registry stores it.
3. Scoring, as one Spark scoring task runs it: an N-row all14 pixel file (toy fluxes in the
   native columns), ``scoring.task.scorer`` (model cache, device, precision check, kernel) inside
   ``hats``' task body (read the pixel's Parquet in batches, map, write the pixel's output file).
   Rows/s of a first task (model load and precision check included) and of a warm one (the
   worker's model cache is reused, as Spark reuses Python workers), the precision chosen.

The table also says which training precision (``train.autocast=auto``: bf16, fp16 + scaler or
fp32) and feeding (shard on the device, pinned prefetch or host) the rank chose, and whether the
scoring task overlapped reading, scoring and writing; ``bench/device_paths.py`` measures each of
those against its plain twin.

Device utilisation is sampled every 0.2 s with ``torch.cuda.utilization`` (needs pynvml; else n/a).
Prints one table; exits non-zero when the rows scored differ from the rows read.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from photoz_spark import hats
from photoz_spark.bands import load_bands
from photoz_spark.config import load_config
from photoz_spark.features.build import batch_summary, feature_batch, layout, output_schema
from photoz_spark.features.catalog import LAYOUT_FILE, STATS_FILE
from photoz_spark.features.run import feature_spec, properties
from photoz_spark.features.sequencing import band_columns
from photoz_spark.features.stats import stats_from_moments
from photoz_spark.flags import FLAGS_COLUMN
from photoz_spark.toy import toy_matched_table

BAND_SET = "all14"
PIXEL_ORDER = 0  # the toy sky is a 2 x 2 degree patch: one order-0 pixel holds every row


class Utilisation:
    """Mean CUDA utilisation (%) while the block runs, sampled in a thread; None when unavailable."""

    def __init__(self, device: str):
        self.device, self.samples, self._stop = device, [], threading.Event()
        self.available = device.startswith("cuda")
        if self.available:
            try:
                torch.cuda.utilization(torch.device(device))
            except Exception:  # noqa: BLE001 - no pynvml / no NVML: reported as n/a
                self.available = False

    def __enter__(self):
        if self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.2):
            self.samples.append(torch.cuda.utilization(torch.device(self.device)))

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


class EpochClock(io.TextIOBase):
    """Stands in for stdout around ``train_rank``: forwards its output and notes when each
    epoch line is printed (the rank prints one after validation, checkpoint and history)."""

    def __init__(self, out):
        self.out, self.times = out, []

    def write(self, text: str) -> int:
        if text.startswith("epoch"):
            self.times.append(time.perf_counter())
        return self.out.write(text)

    def flush(self):
        self.out.flush()


def features_catalog(rows: int, directory: Path, seed: int = 1) -> dict:
    """A toy all14 features catalog at ``directory``, made with build_features' own functions."""
    config = load_config("features.yaml", overrides=[f"features.band_set={BAND_SET}"])
    spec = feature_spec(config["features"], load_bands(), {"photoz_catalog": "dr16q"})  # the toy is DR16Q-like
    table = toy_matched_table(rows, seed)
    schema = output_schema(spec, table.schema)
    featured = pa.Table.from_batches([feature_batch(b, spec, schema) for b in table.to_batches()], schema=schema)
    summary = batch_summary(featured.combine_chunks().to_batches()[0], spec)
    stats = {**stats_from_moments({k: np.asarray(v) for k, v in summary["train"].items()}, spec.band_set),
             "split": "train", "n_rows": summary["splits"]["train"]}
    lay = layout(spec, "toy")
    hats.write_hats_table(featured, directory, order=PIXEL_ORDER, ra_col="ra", dec_col="dec",
                          catalog_name=f"features_{BAND_SET}", extra_properties=properties(lay))
    (directory / STATS_FILE).write_text(json.dumps(stats))
    (directory / LAYOUT_FILE).write_text(json.dumps(lay))
    return {"layout": lay, "stats": stats, "splits": summary["splits"]}


def train_recipe(features_dir: Path, out_dir: Path, batch: int, lr: float, epochs: int, use_gpu: bool) -> dict:
    """One training rank (``train_rank``, world size 1) with a checkpoint every epoch; its history."""
    from photoz_spark.train.run import model_config, train_rank

    config = load_config("train.yaml", overrides=[f"train.batch_size={batch}", f"train.lr={lr}",
                                                  f"train.max_epochs={epochs}", f"train.patience={epochs + 1}",
                                                  "train.resume=true"])
    cfg = config["train"]
    mcfg = model_config(config["model"], json.loads((features_dir / LAYOUT_FILE).read_text()))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    clock = EpochClock(sys.stdout)
    with Utilisation("cuda:0" if use_gpu else "cpu") as util, contextlib.redirect_stdout(clock):
        t0 = time.perf_counter()
        result = train_rank(str(features_dir), str(out_dir), cfg, mcfg, use_gpu)
    history = [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]
    for record, at in zip(history, clock.times, strict=True):
        record["wall_s"] = at - t0
    return {"batch": batch, "lr": lr, "history": history, "result": result, "model_config": mcfg,
            "checkpoint": (out_dir / "checkpoint.pt").is_file(), "utilisation": util.mean,
            "samples_per_s": float(np.median([h["samples_per_s"] for h in history[1:] or history]))}


def time_to(history: list[dict], target: float) -> float | None:
    """Wall seconds until the validation NLL first reached ``target`` (None: never)."""
    return next((h["wall_s"] for h in history if h["val_loss"] <= target), None)


def calibrated_model(features_dir: Path, recipe: dict, out_dir: Path, model_dir: Path) -> dict:
    """The recipe's best weights with a PIT recalibration, saved as the registry stores a model."""
    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.model.calibration import PitCalibration
    from photoz_spark.registry.artifact import save_model_files
    from photoz_spark.train.feeding import ArrowFeed
    from photoz_spark.train.run import evaluate_split

    feed = ArrowFeed(features_dir)
    model = BiLSTMMDN(ModelConfig(**recipe["model_config"]))
    model.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True))
    _, arrays = evaluate_split(model, feed.load("validation"))
    calibration = PitCalibration.fit(arrays["pit"], 50)
    save_model_files(model_dir, model.state_dict(),
                     {"model_config": recipe["model_config"], "layout": feed.layout, "stats": feed.stats,
                      "metrics": {}, "calibration": calibration.to_dict()}, load_bands())
    return {"validation_rows": len(arrays["pit"])}


def score_pixel_file(model_dir: Path, source: Path, out: Path, device: str, precision: str,
                     batch_size: int) -> dict:
    """Score every pixel of ``source`` twice through a scoring task's code; rows/s of each pass."""
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.resolve import ModelFiles
    from photoz_spark.scoring import task
    from photoz_spark.scoring.kernel import output_schema as scored_schema

    files = ModelFiles.from_dir(model_dir)
    band_set = PhotozModel(model_dir).band_set
    cat = load_bands().catalogs["dr16q"]
    keep = tuple(dict.fromkeys((cat.id, cat.ra, cat.dec, hats.HEALPIX_COLUMN)))
    columns = list(dict.fromkeys([*keep, *band_columns(band_set), FLAGS_COLUMN]))
    runtime = task.Runtime(device=device, precision=precision)
    checks = SimpleNamespace(results=[])
    checks.add = checks.results.extend  # the accumulator's add
    fn = task.scorer(SimpleNamespace(value=files), keep, None, runtime, checks)
    order = int(hats.read_properties(source)["hats_order"])
    pixel_tasks = hats._tasks(source, order)  # map_hats' tasks: one per source pixel
    passes = []
    for label in ("first task", "warm task"):
        shutil.rmtree(out, ignore_errors=True)
        (out / f"Norder={order}").mkdir(parents=True)  # map_hats' driver makes this level
        mapper = hats._executor_pixel_mapper(str(source / hats.DATASET_DIR), str(out), order, order,
                                             hats._pixel_file_reader(fn, columns, batch_size))
        with Utilisation(runtime.task_device()) as util:
            t0 = time.perf_counter()
            reports = list(mapper(iter(pixel_tasks)))  # one report row per task, as map_hats' partitions yield
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        rows = int(sum(report["n_rows"] for report in reports))
        passes.append({"task": label, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                       "utilisation": util.mean})
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in out.rglob("*.parquet"))
    chosen = sorted({v for (model_id, dev, _), v in task._PRECISION.items() if model_id == files.model_id})
    schema_ok = pq.read_schema(next(out.rglob("*.parquet"))).names == scored_schema(
        hats.read_schema(source), keep).names
    return {"passes": passes, "rows_written": written, "precision": ",".join(chosen), "checks": checks.results,
            "schema_ok": schema_ok, "device": runtime.task_device(),
            "overlap": runtime.overlaps(runtime.task_device())}


def run_job_path(args) -> int:
    """The --job-path check; prints the table, returns the exit code."""
    cuda = args.device.startswith("cuda")
    device = "cuda" if cuda else "cpu"
    epochs = args.epochs or (10 if cuda else 3)
    fast_batch = args.fast_batch or (8192 if cuda else 512)
    train_rows = args.train_rows or min(args.rows, 400_000)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="photoz-gpu-check-"))
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"job path on {name}, torch {torch.__version__}: {args.rows:,} rows scored, {train_rows:,} rows trained")
    try:
        t0 = time.perf_counter()
        built = features_catalog(train_rows, root / "features" / BAND_SET)
        print(f"features catalog: {built['splits']} in {time.perf_counter() - t0:.1f} s")
        recipes = [train_recipe(root / "features" / BAND_SET, root / "train" / f"b{batch}", batch, lr, epochs, cuda)
                   for batch, lr in ((128, 1e-3), (fast_batch, args.fast_lr))]
        target = args.target_nll if args.target_nll is not None else max(
            min(h["val_loss"] for h in r["history"]) for r in recipes)
        calibrated_model(root / "features" / BAND_SET, recipes[0], root / "train" / "b128", root / "model")
        source = root / "catalogs" / "dr16q"
        t0 = time.perf_counter()
        hats.write_hats_table(toy_matched_table(args.rows, seed=7), source, order=PIXEL_ORDER, ra_col="RA",
                              dec_col="DEC", catalog_name="dr16q")
        print(f"pixel file: {args.rows:,} rows in {time.perf_counter() - t0:.1f} s")
        scored = score_pixel_file(root / "model", source, root / "scores", device, args.precision, args.batch_size)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    util = lambda v: "n/a" if v is None else f"{v:.0f} %"
    print(f"\n{'what':<34} {'value':>14}  {'device util':>11}")
    for r in recipes:
        reach = time_to(r["history"], target)
        print(f"{'train b' + str(r['batch']) + ' samples/s':<34} {r['samples_per_s']:>14,.0f}  {util(r['utilisation']):>11}")
        print(f"{'train b' + str(r['batch']) + f' s to val NLL {target:.3f}':<34} "
              f"{'not reached' if reach is None else f'{reach:.1f}':>14}  "
              f"{'checkpoint ok' if r['checkpoint'] else 'NO CHECKPOINT':>11}")
        print(f"{'train b' + str(r['batch']) + ' precision, feeding':<34} "
              f"{r['result'].get('precision', '?') + ', ' + r['result'].get('feeding', '?'):>14}")
    for p in scored["passes"]:
        print(f"{'score ' + p['task'] + ' rows/s':<34} {p['rows_per_s']:>14,.0f}  {util(p['utilisation']):>11}")
    print(f"{'score precision chosen':<34} {scored['precision']:>14}  {scored['device']:>11}")
    print(f"{'score read/score/write overlap':<34} {'on' if scored['overlap'] else 'off':>14}")
    for check in scored["checks"]:
        print(f"  precision check {check['precision']}: p{100 * 0.99:.0f} |dz_mean| {check['dz_quantile']:.1e}, "
              f"max {check['dz_max']:.1e} -> {'kept' if check['passed'] else 'fp32'}")
    ok = scored["rows_written"] == args.rows and all(p["rows"] == args.rows for p in scored["passes"]) \
        and scored["schema_ok"] and all(r["checkpoint"] for r in recipes)
    print("\nJOB PATH OK" if ok else f"\nJOB PATH FAILED: rows written {scored['rows_written']} of {args.rows}")
    return 0 if ok else 1

