"""What one Spark scoring task runs, without Spark: the model cache, device and precision, the scorer.

``scoring/run.py`` hands ``scorer(...)`` to ``hats.map_hats``; ``bench/gpu_check.py --job-path``
calls the same function through ``hats``' task body on a host with PyTorch only. Nothing here
imports pyspark (the task's GPU assignment is read from ``TaskContext`` only when pyspark is
there) or mlflow.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from photoz_spark.config import require
from photoz_spark.registry.artifact import META_FILE, WEIGHTS_FILE
from photoz_spark.registry.resolve import ModelFiles
from photoz_spark.threads import background

_MODELS: dict = {}  # model id -> PhotozModel, one per Python worker process


def load_model(files: ModelFiles, bands_file: str | None = None, device: str = "cpu", precision: str = "fp32"):
    """The PhotozModel of ``files`` on ``device``, built once per process (and device)."""
    key = (files.model_id, device)
    model = _MODELS.get(key)
    if model is None:
        from photoz_spark.bands import load_bands
        from photoz_spark.registry.artifact import PhotozModel

        tmp = Path(tempfile.mkdtemp(prefix="photoz-score-"))
        try:
            (tmp / WEIGHTS_FILE).write_bytes(files.weights)
            (tmp / META_FILE).write_bytes(files.meta)
            model = PhotozModel(tmp, load_bands(bands_file) if bands_file else None, device=device)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _MODELS[key] = model
    model.precision = precision
    return model


@dataclass(frozen=True)
class Runtime:
    """Where and how the workers run the network (``score.device``, ``score.precision``)."""

    device: str = "auto"             # auto | cpu | cuda
    precision: str = "auto"          # auto (fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    tolerance: float = 1e-3          # |z_mean(half) - z_mean(fp32)| allowed ...
    quantile: float = 0.99           # ... for this share of the checked rows
    check_rows: int = 4096
    overlap: str = "auto"            # auto (on a GPU) | on | off: read, score and write in three threads
    gpus_per_task: float = 0.25      # a scoring task's share of a GPU on a GPU cluster (task_gpus)

    @classmethod
    def from_config(cls, cfg: dict) -> Runtime:
        runtime = cls(str(cfg["device"]), str(cfg["precision"]), float(cfg["agreement_tolerance"]),
                      float(cfg["agreement_quantile"]), int(cfg["agreement_rows"]),
                      {True: "on", False: "off"}.get(cfg["overlap"], str(cfg["overlap"])),
                      float(cfg["gpus_per_task"]))
        require(runtime.overlap in ("auto", "on", "off"), f"score.overlap must be auto, on or off, got {cfg['overlap']!r}")
        g = runtime.gpus_per_task
        require(g == 0 or 0 < g <= 1 or g == int(g),
                f"score.gpus_per_task must be 0 (off), a fraction in (0, 1] or a whole number, got {g}")
        require(runtime.device in ("auto", "cpu", "cuda"), f"score.device must be auto, cpu or cuda, got {runtime.device!r}")
        require(runtime.precision in ("auto", "fp32", "bf16", "fp16"),
                f"score.precision must be auto, fp32, bf16 or fp16, got {runtime.precision!r}")
        require(runtime.tolerance > 0 and 0 < runtime.quantile <= 1 and runtime.check_rows >= 1,
                "score.agreement_tolerance must be > 0, score.agreement_quantile in (0, 1], score.agreement_rows >= 1")
        return runtime

    def task_device(self) -> str:
        """This task's device: the GPU Spark assigned to it (GPU scheduling), else cuda:0 or cpu."""
        import torch

        if self.device == "cpu" or not torch.cuda.is_available():
            if self.device == "cuda":
                raise RuntimeError("score.device=cuda but this executor has no CUDA device "
                                   "(set score.device=auto or cpu, or schedule GPUs: docs/deploy.md)")
            return "cpu"
        try:
            from pyspark import TaskContext
        except ImportError:  # a GPU host with torch only (bench/gpu_check.py --job-path)
            TaskContext = None
        context = TaskContext.get() if TaskContext is not None else None
        gpus = context.resources().get("gpu") if context is not None else None
        return f"cuda:{gpus.addresses[0]}" if gpus and gpus.addresses else "cuda:0"

    def overlaps(self, device: str) -> bool:
        """Whether a task reads, scores and writes in three threads: auto does on a GPU, where the
        host would otherwise leave the device idle; a CPU task has one core (spark.task.cpus)."""
        return self.overlap == "on" or (self.overlap == "auto" and device != "cpu")

    def wanted_precision(self, device: str) -> str:
        if self.precision != "auto":
            return self.precision if device != "cpu" else "fp32"  # half autocast is a GPU feature
        return "fp16" if device != "cpu" else "fp32"


_PRECISION: dict = {}  # (model id, device, wanted) -> precision that passed the check, per worker


def _checked_precision(model, files: ModelFiles, device: str, runtime: Runtime, batch, checks) -> str:
    """The precision this worker uses: the wanted half precision only if its z_mean agrees with fp32."""
    from photoz_spark.scoring.kernel import precision_check

    wanted = runtime.wanted_precision(device)
    key = (files.model_id, device, wanted)
    if key not in _PRECISION:
        if wanted == "fp32":
            _PRECISION[key] = "fp32"
        else:
            model.precision = wanted
            result = precision_check(model, batch, runtime.tolerance, runtime.quantile, runtime.check_rows)
            _PRECISION[key] = wanted if result["passed"] else "fp32"
            checks.add([{"device": device, "precision": wanted, **result}])
    return _PRECISION[key]



def task_gpus(gpus_per_task: float, device: str, local_mode: bool, executor_gpus: float,
              dynamic_allocation: bool) -> float | None:
    """The GPU amount of the scoring stage's task resource profile, or None for no profile.

    Training takes whole GPUs (``spark.gpu.task_amount``, for every stage); scoring tasks are
    host-bound (read, features, summaries, write), so several share a GPU: the scoring stage asks
    for ``gpus_per_task`` of one through a Spark stage-level TaskResourceProfile.

    Args:
        gpus_per_task: ``score.gpus_per_task`` (0: off).
        device: ``score.device``.
        local_mode: the master is ``local[...]`` (no task resources are scheduled there).
        executor_gpus: ``spark.executor.resource.gpu.amount`` (0: a CPU cluster).
        dynamic_allocation: ``spark.dynamicAllocation.enabled`` (Spark refuses task-only profiles then).

    Returns:
        The amount, or None: CPU scoring, local mode, no GPUs, dynamic allocation, or off.
    """
    if gpus_per_task <= 0 or device == "cpu" or local_mode or executor_gpus <= 0 or dynamic_allocation:
        return None
    return float(gpus_per_task)


def scorer(files_bc, keep: tuple[str, ...], bands_file: str | None, runtime: Runtime, checks,
            absent: tuple[str, ...] = ()):
    """The function a scoring task runs on its pixel: input batches (of score.batch_size rows at
    most, as ``map_hats`` reads them) -> scored batches (``absent`` columns read as unobserved).

    Args:
        files_bc: the broadcast ``ModelFiles`` (anything with ``.value``).
        keep: input columns passed through.
        bands_file: bands for a model without its band definitions (None: the model's own).
        runtime: device and precision settings.
        checks: where precision checks are reported (a Spark accumulator, or anything with ``add``).
        absent: band columns the catalog lacks (read as unobserved).

    Returns:
        The function ``hats.map_hats`` calls once per pixel.
    """

    def run(batches):
        import torch

        device = runtime.task_device()
        if device == "cpu":
            torch.set_num_threads(1)  # one thread per task: two per worker halve throughput
        if not runtime.overlaps(device):
            return score(batches, device)
        # Reader thread -> scoring thread -> this thread writes (hats' writer): pyarrow's read and
        # write and torch's kernels release the GIL, so the three overlap.
        return background(score(background(batches, name="photoz-read"), device), name="photoz-score")

    def score(batches, device):
        from photoz_spark.scoring.kernel import score_batch

        files = files_bc.value
        model = load_model(files, bands_file, device)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if absent:
                batch = pa.RecordBatch.from_arrays([*batch.columns, *(pa.nulls(batch.num_rows, pa.float64()) for _ in absent)],
                                                   names=[*batch.schema.names, *absent])
            model.precision = _checked_precision(model, files, device, runtime, batch, checks)
            yield score_batch(model, batch, keep)
    return run
