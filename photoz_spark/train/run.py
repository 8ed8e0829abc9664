"""Spark orchestration of training: TorchDistributor ranks, then MLflow logging and registration.

The ranks (``train_rank``) only train: each reads its shard (``train.backend``: arrow, or
petastorm materialised by the driver, see feeding.py), runs the plain-torch loop under
DDP (gloo on CPU, nccl on GPU) and rank 0 checkpoints every epoch. The driver validates
everything before starting them, checks afterwards that every rank finished (TorchDistributor's
local mode ignores child exit codes), evaluates the best weights on the validation and test
splits, and logs, registers and (if better) promotes the model. With ``train.ensemble`` > 1 the
ranks train M members, in turn or at once in M process groups (``train.ensemble_parallel``), and
the model registered is their mixture (train/ensemble.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from photoz_spark import hats
from photoz_spark.config import ConfigError, require, resolve_recipe
from photoz_spark.errors import InputError, MissingInput
from photoz_spark.features.catalog import LAYOUT_FILE
from photoz_spark.model import ModelConfig
from photoz_spark.train.ensemble import member_finished, parallel_members
from photoz_spark.train.guard import check_resume, fingerprint
from photoz_spark.train.loop import TrainSettings

STATUS_OK = "ok"



def settings_from(cfg: dict) -> TrainSettings:
    fields = TrainSettings.__dataclass_fields__
    cfg = resolve_recipe(cfg)
    try:
        return TrainSettings(**{k: v for k, v in cfg.items() if k in fields})
    except ValueError as err:
        raise ConfigError(str(err)) from None


def rank_batch(batch_size: int, world: int) -> int:
    """Rows per rank of a global batch: DDP averages the ranks' gradients, so ``world`` ranks of
    ``batch_size // world`` rows take the same optimizer step as one process on ``batch_size``."""
    if batch_size % world:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must divide evenly over "
                          f"train.num_processes={world} ranks")
    return batch_size // world


def validate(cfg: dict, layout: dict, stats: dict, counts: dict) -> None:
    """Refuse before any training: wrong layout for the band set, empty splits, bad settings."""
    require(cfg["backend"] in ("arrow", "petastorm"), f"train.backend must be arrow or petastorm, got {cfg['backend']!r}")
    require(cfg["use_gpu"] in ("auto", True, False), f"train.use_gpu must be auto, true or false, got {cfg['use_gpu']!r}")
    require(cfg["autocast"] in ("auto", "none", "bf16", "fp16"),
            f"train.autocast must be auto, none, bf16 or fp16, got {cfg['autocast']!r}")
    for key in ("num_processes", "max_epochs", "batch_size", "patience", "lr_step_epochs", "ensemble"):
        require(cfg[key] >= 1, f"train.{key} must be >= 1, got {cfg[key]}")
    require(cfg["lr"] > 0, "train.lr must be > 0")
    for key in ("weight_decay", "warmup_epochs", "grad_clip"):
        require(cfg[key] >= 0, f"train.{key} must be >= 0, got {cfg[key]}")
    require(cfg["ensemble_parallel"] in ("auto", True, False),
            f"train.ensemble_parallel must be auto, true or false, got {cfg['ensemble_parallel']!r}")
    parallel_members(cfg["ensemble_parallel"], cfg["ensemble"], cfg["num_processes"], False, cfg["backend"], 1)
    require(cfg["recalibrate"] in (True, False), f"train.recalibrate must be true or false, got {cfg['recalibrate']!r}")
    require(cfg["recalibration"] in ("mixture", "pit_map"),
            f"train.recalibration must be mixture or pit_map, got {cfg['recalibration']!r}")
    require(int(cfg["calibration_knots"]) >= 1, "train.calibration_knots must be >= 1")
    require(int(cfg["calibration_nodes"]) >= 1, "train.calibration_nodes must be >= 1")
    require(layout["band_set"] == cfg["band_set"],
            f"features were built for band set {layout['band_set']!r}, not {cfg['band_set']!r} "
            f"(train with --band-set {layout['band_set']})")
    require(len(stats["mean"]) == layout["n_steps"] == len(layout["bands"]),
            "stats.json and layout.json disagree on the number of bands: rebuild the features")
    settings_from(cfg)  # unknown optimizer/schedule -> one-line error
    batch = rank_batch(cfg["batch_size"], cfg["num_processes"])
    for split in ("train", "validation"):
        per_rank = counts[split] // cfg["num_processes"]
        require(per_rank >= (batch if split == "train" else 1),
                f"the {split} split has {counts[split]} rows: too few for {cfg['num_processes']} ranks"
                + (f" at batch {cfg['batch_size']} ({batch} per rank)" if split == "train" else ""))
    require(bool(np.all(np.isfinite(stats["std"]))) and min(min(s) for s in stats["std"]) > 0,
            "stats.json has a zero or non-finite std: a band has no variation in the training split")


def rank_sum(device, group=None) -> Callable[[np.ndarray], np.ndarray]:
    """A collective sum of an int64 array over the DDP ranks of ``group`` (None: all ranks;
    ``ArrowFeed``'s ``reduce``)."""
    import torch
    from torch import distributed as dist

    def reduce(values: np.ndarray) -> np.ndarray:
        total = torch.from_numpy(np.ascontiguousarray(values, np.int64)).to(device)
        dist.all_reduce(total, group=group)
        return total.cpu().numpy()

    return reduce


def rank_error_file(out_dir: Path, rank: int) -> Path:
    """Where a rank leaves its one-line input error for the driver to relay."""
    return out_dir / f"rank-{rank}.error"


def relay_rank_error(out_dir: Path) -> None:
    """Raise the ranks' one-line input error (NaN/inf in a split...) on the driver, if one was left."""
    for path in sorted(out_dir.glob("rank-*.error")):
        raise InputError(path.read_text().strip())


PARALLEL_MEMBERS = "parallel_members"  # set by ensemble.train_parallel in the ranks' cfg only (not a setting)
MEMBER_RANK_RESULT = "rank-result.json"


def member_group(rank: int, world: int, members: int):
    """Split the job's ranks into ``members`` process groups of ``world // members`` consecutive ranks.

    Every rank must create every group, in the same order (torch.distributed.new_group).

    Returns:
        (this rank's member index, its group, its rank in the group, the group's size).
    """
    from torch import distributed as dist

    size = world // members
    groups = [dist.new_group(list(range(m * size, (m + 1) * size))) for m in range(members)]
    return rank // size, groups[rank // size], rank % size, size


def train_rank(features_dir: str, out_dir: str, cfg: dict, model_cfg: dict, use_gpu: bool, feed=None,
               tracking: dict | None = None) -> dict:
    """One DDP rank (run by TorchDistributor): train on this rank's shard; rank 0 saves the best weights.

    ``feed``: a feeding.Feed made on the driver (PetastormFeed); None reads ``features_dir`` with ArrowFeed.
    With ``cfg["parallel_members"]`` = M (ensemble.train_parallel) the ranks split into M groups, and
    group i trains ensemble member i (seed ``train.seed + i``) in ``member-<i>/`` under DDP over its
    own ranks only; a member that finished in an earlier run (``result.json``) is not retrained.
    """
    import torch
    from torch import distributed as dist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(out_dir)
    if world > 1:
        store = os.environ.get(RENDEZVOUS_FILE_ENV)  # local mode: a file store (``local_rank_env``)
        dist.init_process_group("nccl" if use_gpu else "gloo", **(
            {"init_method": f"file://{store}", "rank": rank, "world_size": world} if store else {}))
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.set_device(device)  # nccl's collectives (the feed's counts) run on this rank's GPU
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    members, group = int(cfg.get(PARALLEL_MEMBERS, 0)), None
    if members:
        index, group, local, size = member_group(rank, world, members)
        folder = out / f"member-{index}"
        done = member_finished(folder, cfg["resume"])
        result = {} if done else _train_shard(features_dir, folder, {**cfg, "seed": int(cfg["seed"]) + index},
                                              model_cfg, device, (rank, local, size, group), out, feed, None,
                                              f"member {index}: ")
        if local == 0 and not done:
            (folder / MEMBER_RANK_RESULT).write_text(json.dumps(result))
    else:
        result = _train_shard(features_dir, out, cfg, model_cfg, device, (rank, rank, world, None), out, feed,
                              tracking)
    (out / f"rank-{rank}.status").write_text(STATUS_OK)
    if world > 1:
        # Parallel members: only the member's own ranks wait for each other, so a member that stops
        # early never sits in a job-wide barrier (its timeout) while another member trains on.
        dist.barrier(group=group)
        dist.destroy_process_group()
    return result


def _train_shard(features_dir: str, out: Path, cfg: dict, model_cfg: dict, device, ranks: tuple, status_dir: Path,
                 feed, tracking: dict | None, label: str = "") -> dict:
    """Train one network on this rank's shard (``train_rank``'s work; the caller set up torch.distributed).

    Args:
        out: where the network's checkpoint, history and best weights go (its group's rank 0 writes them).
        ranks: (rank in the job, rank in the network's group, the group's size, the group: None = all ranks).
        status_dir: where a rank leaves its one-line error (``rank_error_file``, by job rank).
        label: prefixes the epoch lines this network prints.

    Returns:
        best epoch and loss, precision, feeding, epochs run, early stopped.
    """
    import torch

    from photoz_spark.errors import UserError
    from photoz_spark.model import BiLSTMMDN
    from photoz_spark.train.feeding import ArrowFeed, epoch_source, eval_batches, train_redshifts
    from photoz_spark.train.loop import train

    job_rank, rank, world, group = ranks
    settings = settings_from(cfg)
    batch = rank_batch(settings.batch_size, world)  # batch_size is global: world ranks step together on it
    # Each rank reads only its row groups of each split and checks them (the driver reads no split).
    feed = ArrowFeed(features_dir, reduce=rank_sum(device, group) if world > 1 else None) if feed is None else feed
    try:
        val_data = feed.eval_data("validation", rank, world)
        epochs, placed = epoch_source(feed, rank, world, batch, settings.seed, device)
    except UserError as err:  # every rank raises it (collective check): the driver relays the line
        rank_error_file(status_dir, job_rank).write_text(str(err))
        raise
    if rank == 0:
        print(f"{label}rank training shard: {placed}", flush=True)
    torch.manual_seed(settings.seed)  # the initial weights: each rank process starts with a random torch seed
    model = BiLSTMMDN(ModelConfig(**model_cfg))
    if settings.head_init == "quantiles":  # DDP then gives every rank rank 0's (a resume overwrites it)
        model.init_head(train_redshifts(feed, rank, world, batch, settings.seed))

    log_metric = None
    if rank == 0 and tracking:  # per-epoch metrics go to the run live, from rank 0
        from photoz_spark.registry.tracking import epoch_logger
        log_metric = epoch_logger(tracking["uri"], tracking["run_id"])

    def on_epoch(record):
        if rank == 0:
            line = {k: record[k] for k in ("epoch", "train_loss", "val_loss", "lr", "samples_per_s")}
            line["samples_per_s"] *= world
            with open(out / "history.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")
            if log_metric is not None:
                for key, name in (("train_loss", "train_nll"), ("val_loss", "val_nll"), ("lr", "lr"),
                                  ("samples_per_s", "samples_per_s")):
                    log_metric(name, line[key], step=line["epoch"])
            print(f"{label}epoch {record['epoch']:4d}  train NLL {record['train_loss']:8.4f}  "
                  f"val NLL {record['val_loss']:8.4f}  lr {record['lr']:.1e}  {line['samples_per_s']:9,.0f} samples/s",
                  flush=True)

    steps = (int(cfg.get("train_rows", 0)) // world) // batch or None
    val_rows = eval_rows(model, device)
    try:
        result = train(model, epochs, lambda: eval_batches(val_data, val_rows), settings, device=device,
                       checkpoint=out / "checkpoint.pt" if cfg["resume"] else None, on_epoch=on_epoch,
                       steps_per_epoch=steps, group=group)
    except UserError as err:  # a streamed feed (petastorm) finds NaN/inf batch by batch
        rank_error_file(status_dir, job_rank).write_text(str(err))
        raise
    finally:
        feed.close()
    if rank == 0:
        torch.save({k: v.cpu() for k, v in result.best_state.items()}, out / "best.pt")
    return {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss, "precision": result.precision,
            "feeding": placed,
            "epochs_run": result.epochs_run, "stopped_early": result.stopped_early}


@dataclass(frozen=True)
class GpuPlan:
    """How the ranks run: on GPUs or not, and how many of them."""

    use_gpu: bool
    num_processes: int
    note: str = ""     # why the plan differs from the settings ("" when it does not)


def gpu_plan(setting, local_mode: bool, num_processes: int, cuda_devices: int, driver_gpus: int,
             executor_gpus: float) -> GpuPlan:
    """Decide GPU or CPU ranks, and their number, from ``train.use_gpu`` and what the session has.

    Local mode needs both CUDA on the driver and driver GPU resources in the session (set by
    ``spark.get_spark`` from the discovery script): TorchDistributor raises without the latter.
    It runs one rank per GPU, so ranks beyond the GPUs are dropped here (TorchDistributor would
    drop them too, and the driver would then wait for status files that never come). A cluster
    runs the ranks on executors with ``spark.executor.resource.gpu.amount`` > 0.

    Args:
        setting: ``train.use_gpu`` (auto, True, False).
        local_mode: the master is ``local[...]``.
        num_processes: ``train.num_processes``.
        cuda_devices: ``torch.cuda.device_count()`` on the driver.
        driver_gpus: GPU addresses in the session's driver resources.
        executor_gpus: ``spark.executor.resource.gpu.amount``.

    Returns:
        The GpuPlan.

    Raises:
        ConfigError: ``train.use_gpu=true`` without usable GPUs.
    """
    if setting is False:
        return GpuPlan(False, num_processes)
    if not local_mode:
        if executor_gpus > 0:
            return GpuPlan(True, num_processes)
        if setting is True:
            raise ConfigError("train.use_gpu=true but the cluster schedules no GPUs: set spark.gpu.enabled=true "
                              "(docs/deploy.md) or train.use_gpu=auto")
        return GpuPlan(False, num_processes)
    usable = min(cuda_devices, driver_gpus)
    if usable == 0:
        why = ("torch sees no CUDA device" if cuda_devices == 0 else
               "the Spark session holds no driver GPU resources (it was started without "
               "spark.driver.resource.gpu.*, e.g. by a notebook: see docs/deploy.md)")
        if setting is True:
            raise ConfigError(f"train.use_gpu=true but {why}")
        return GpuPlan(False, num_processes, f"training on CPU: {why}" if cuda_devices else "")
    if num_processes > usable:
        return GpuPlan(True, usable, f"train.num_processes={num_processes} reduced to {usable}: one rank per GPU")
    return GpuPlan(True, num_processes)


def session_gpu_plan(spark, cfg: dict) -> GpuPlan:
    """``gpu_plan`` for this session: counts the driver's CUDA devices and the session's GPU resources."""
    local_mode = spark.sparkContext.master.startswith("local")
    cuda_devices = 0
    if local_mode and cfg["use_gpu"] is not False:
        import torch
        cuda_devices = torch.cuda.device_count()
    gpu = spark.sparkContext.resources.get("gpu") if local_mode else None
    executor_gpus = float(spark.sparkContext.getConf().get("spark.executor.resource.gpu.amount", "0"))
    return gpu_plan(cfg["use_gpu"], local_mode, cfg["num_processes"], cuda_devices,
                    len(gpu.addresses) if gpu is not None else 0, executor_gpus)


RENDEZVOUS_FILE_ENV = "PHOTOZ_RENDEZVOUS_FILE"


def local_rank_env(out_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """What the ranks' environment gets in local mode, so that they listen on loopback only.

    - ``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME=lo``: gloo's pair sockets (and NCCL's bootstrap)
      bind the loopback interface, not the address the host name resolves to (unless set already).
    - ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` and a file store for the process group
      (``RENDEZVOUS_FILE_ENV``, read by ``train_rank``): torchrun's agent then opens no second
      TCPStore for the ranks, and the ranks open none either. A TCPStore server binds every
      interface whatever host it is given (torch 2.13, both backends).

    What stays on every interface: torchrun's own c10d rendezvous store (``--standalone``, which
    TorchDistributor always passes in local mode); see docs/deploy.md.

    Args:
        out_dir: the run's folder (holds the store file, unique per run).
        environ: the current environment (settings the user made are kept).

    Returns:
        The variables to set.
    """
    env = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    env = {k: v for k, v in env.items() if k not in environ}
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env[RENDEZVOUS_FILE_ENV] = str(Path(out_dir).absolute() / f".rendezvous-{uuid.uuid4().hex}")
    return env


@contextmanager
def ranks_environment(env: dict[str, str]):
    """Set ``env`` while the ranks start (TorchDistributor's torchrun inherits ``os.environ``),
    then restore the environment and remove the store file."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if RENDEZVOUS_FILE_ENV in env:
            Path(env[RENDEZVOUS_FILE_ENV]).unlink(missing_ok=True)


def run_distributed(spark, features_dir: Path, out_dir: Path, cfg: dict, model_cfg: dict, feed=None,
                    tracking: dict | None = None) -> dict:
    """Start the ranks with TorchDistributor and make sure each of them finished (``feed``: see train_rank)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    local_mode = spark.sparkContext.master.startswith("local")
    plan = session_gpu_plan(spark, cfg)
    if plan.note:
        print(plan.note, flush=True)
    use_gpu, ranks = plan.use_gpu, plan.num_processes
    for stale in [*out_dir.glob("rank-*.status"), *out_dir.glob("rank-*.error")]:
        stale.unlink()
    distributor = TorchDistributor(num_processes=ranks, local_mode=local_mode, use_gpu=use_gpu)
    error = None
    # Local mode: ranks on loopback (a cluster's ranks must reach each other across hosts).
    env = local_rank_env(out_dir, os.environ) if local_mode else {}
    try:
        with ranks_environment(env):
            result = distributor.run(train_rank, str(features_dir), str(out_dir), cfg, model_cfg, use_gpu, feed,
                                     tracking)
    except Exception as err:  # noqa: BLE001 - reported below with which ranks failed
        result, error = None, err
    # Local mode may ignore a child's exit code: each rank proves it finished with a status file.
    missing = [r for r in range(ranks) if not (out_dir / f"rank-{r}.status").is_file()]
    if missing or result is None:
        relay_rank_error(out_dir)
        raise RuntimeError(f"training ranks {missing or 'all'} did not finish: see the output above; "
                           f"the last checkpoint in {out_dir} lets a rerun resume") from error
    return {**result, "use_gpu": use_gpu, "local_mode": local_mode, "num_processes": ranks}


def model_config(cfg_model: dict, layout: dict) -> dict:
    return asdict(ModelConfig(n_steps=layout["n_steps"], n_channels=layout["n_channels"], **cfg_model))


def eval_rows(model, device) -> int:
    """Rows per network call when evaluating: on CPU the scoring kernel's chunk (8192-row calls ran
    at half its speed: registry.artifact.cpu_chunk_rows), elsewhere 8192."""
    import torch

    from photoz_spark.registry.artifact import cpu_chunk_rows
    return cpu_chunk_rows(model.config) if torch.device(device).type == "cpu" else 8192


def clean_run_dir(out_dir: Path) -> None:
    """After a successful registration the next run starts fresh, not from this checkpoint."""
    shutil.rmtree(out_dir, ignore_errors=True)


def evaluate_split(model, data, calibration=None, keep_mixture: bool = False) -> tuple[dict, dict]:
    """Point and CRPS metrics of ``model`` on one split (a FeatureData, or an iterable of batches
    such as ``ArrowFeed.stream``), plus the per-object arrays.

    The metrics are those of the network's own PDFs; with a ``calibration`` the arrays also hold
    the recalibrated PDFs' z_phot, CRPS, PIT and zConf (``cal_*``, see ``model.scores.object_scores``).
    ``keep_mixture``: the arrays also hold ``mixture``, the raw (w, mu, sigma) [N, K] tensors.
    """
    import torch

    from photoz_spark.metrics import point_metrics
    from photoz_spark.model import mixture
    from photoz_spark.model.network import forward_chunks
    from photoz_spark.model.scores import concat_scores, object_scores
    from photoz_spark.train.feeding import FeatureData, eval_batches

    model.eval()
    parts, kept = [], []
    rows = eval_rows(model, next(model.parameters()).device)
    batches = eval_batches(data) if isinstance(data, FeatureData) else data
    with torch.inference_mode():
        for features, observed, z in batches:
            # the network on CPU-sized chunks; the scores on the whole batch (fewer small calls)
            w, mu, sigma = mixture(*forward_chunks(model, features, observed, rows))
            parts.append(object_scores(w, mu, sigma, z, calibration))
            if keep_mixture:
                kept.append((w.cpu(), mu.cpu(), sigma.cpu()))
    arrays = concat_scores(parts, calibration is not None)
    if keep_mixture:
        arrays["mixture"] = tuple(torch.cat([k[i] for k in kept]) for i in range(3))
    return point_metrics(arrays["z_phot"], arrays["z_spec"], arrays["crps"]), arrays


def calibration_metrics(arrays: dict, prefix: str) -> dict:
    """PIT KS statistic (and mean CRPS) before and, when present, after recalibration."""
    from photoz_spark.metrics import pit_statistics

    out = {f"{prefix}_pit_ks": pit_statistics(arrays["pit"])["pit_ks"]}
    if "cal_pit" in arrays:
        out[f"{prefix}_pit_ks_calibrated"] = pit_statistics(arrays["cal_pit"])["pit_ks"]
        out[f"{prefix}_crps_calibrated"] = float(np.mean(arrays["cal_crps"]))
    return out


def train_and_register(spark, config: dict, registry, workdir) -> dict:
    """The whole training stage under the model name's lock (``locks.train_lock``: a second
    training of the same name is refused before any work). Returns the summary the job prints."""
    from photoz_spark.train.feeding import import_petastorm
    from photoz_spark.train.locks import train_lock

    if config["train"]["backend"] == "petastorm":
        import_petastorm()  # not installed: a one-line error before anything (the lock folder too) is made
    cfg = resolve_recipe(config["train"])
    registry.band_set(cfg["band_set"])  # unknown band set -> one-line error
    features = open_features(cfg, workdir)  # refused (no features, no training rows...) before the lock folder
    model_name = config["mlflow"]["model_name"]
    with train_lock(Path(workdir.root) / "train" / model_name, model_name):
        return _train_and_register(spark, config, cfg, registry, workdir, *features)


def open_features(cfg: dict, workdir) -> tuple:
    """The features catalog a training reads, checked: built, undamaged, with training rows.

    Args:
        cfg: the resolved ``train`` settings.
        workdir: a ``cli.Workdir``.

    Returns:
        (its folder, its ``ArrowFeed``, rows per split).

    Raises:
        MissingInput: no features were built; InputError: a damaged file, or no training rows
            (an empty crossmatch gives empty features: an answer there, nothing to learn here).
    """
    from photoz_spark.train.feeding import ArrowFeed

    features_dir = Path(workdir.features) / (cfg.get("features") or cfg["band_set"])  # train.features: "" = band set
    if not (features_dir / LAYOUT_FILE).is_file():
        raise MissingInput(f"no features at {features_dir}: run jobs/build_features.py --band-set {cfg['band_set']}"
                           + (f" --output {cfg['features']}" if cfg.get("features") else ""))
    hats.check_data_files(features_dir, f"features/{features_dir.name}")  # a damaged file: one line naming it
    feed = ArrowFeed(features_dir)
    counts = {s: feed.count(s) for s in ("train", "validation", "test")}
    if counts["train"] == 0:
        raise InputError(f"no training rows in features/{features_dir.name} ({features_dir}: "
                         f"{hats.read_properties(features_dir)['hats_nrows']} rows, "
                         f"{counts['validation']} validation, {counts['test']} test): build the features "
                         "from a matched catalog with spectroscopic redshifts in range")
    return features_dir, feed, counts


def _train_and_register(spark, config: dict, cfg: dict, registry, workdir, features_dir: Path, feed,
                        counts: dict) -> dict:
    """The training stage proper (see ``train_and_register``; ``cfg``: the resolved ``train``
    settings; ``features_dir, feed, counts``: from ``open_features``)."""
    import torch

    from photoz_spark.metrics.figures import zphot_figure
    from photoz_spark.model import calibration as cal
    from photoz_spark.model.ensemble import build_network
    from photoz_spark.registry import tracking as reg
    from photoz_spark.registry.artifact import PhotozModel, save_model_files
    from photoz_spark.train.ensemble import clear_members, has_progress, train_members
    from photoz_spark.train.feeding import PetastormFeed

    t0 = time.time()
    validate(cfg, feed.layout, feed.stats, counts)
    cfg["train_rows"] = counts["train"]  # the ranks' steps per epoch, for warm-up and cosine schedules
    # NaN/inf rows are found by the ranks, each in its shard (train_rank): the driver reads no split.
    model_name = config["mlflow"]["model_name"]
    out_dir = Path(workdir.root) / "train" / model_name
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file = out_dir / "run.json"
    resumed = cfg["resume"] and run_file.is_file() and has_progress(out_dir, cfg["ensemble"])
    mcfg = model_config(config["model"], feed.layout)
    # A checkpoint of other settings (recipe, network, band set, features) is refused, never continued.
    check_resume(out_dir, fingerprint(cfg, mcfg, feed.layout, feed.stats, counts), resumed)
    if not resumed:
        for old in ("checkpoint.pt", "history.jsonl", "best.pt"):
            (out_dir / old).unlink(missing_ok=True)
        clear_members(out_dir)
    # MLflow after the resume check: a refused resume touches (and prints) nothing of the registry.
    uri = reg.tracking_uri(config, workdir)
    experiment_id = reg.connect(uri, workdir, config["mlflow"]["experiment"])
    run_id = json.loads(run_file.read_text())["run_id"] if resumed else None
    with reg.start_run(run_id, experiment_id) as run:
        run_file.write_text(json.dumps({"run_id": run.info.run_id}))
        if not resumed:
            reg.log_params({**{f"train.{k}": v for k, v in cfg.items()}, **{f"model.{k}": v for k, v in mcfg.items()},
                               "rows.train": counts["train"], "rows.validation": counts["validation"],
                               "rows.test": counts["test"]})
        rank_feed = (PetastormFeed.create(spark, features_dir, out_dir / "petastorm-cache", cfg["num_processes"])
                     if cfg["backend"] == "petastorm" else None)  # None: the ranks read with ArrowFeed
        t_train = time.time()
        try:
            # train.ensemble > 1: M members in turn, combined into one network in best.pt (train/ensemble.py)
            dist = (train_members if cfg["ensemble"] > 1 else run_distributed)(
                spark, features_dir, out_dir, cfg, mcfg, rank_feed, {"uri": uri, "run_id": run.info.run_id})
        finally:
            if rank_feed is not None:
                rank_feed.delete()
        t_train = time.time() - t_train
        history = [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]
        model = build_network(ModelConfig(**mcfg), cfg["ensemble"])
        model.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True))
        metrics, plots = {}, {}
        calibration = None
        for split, prefix in (("validation", "val"), ("test", "test")):
            if counts[split]:
                fit_here = split == "validation" and cfg["recalibrate"]
                m, plots[split] = evaluate_split(model, feed.stream(split), calibration, keep_mixture=fit_here)
                metrics.update({f"{prefix}_{k}": v for k, v in m.items() if k != "n"})
                if fit_here:
                    # Fitted on the validation split, judged on the test split it never saw.
                    calibration = cal.fit(cfg["recalibration"], *plots[split].pop("mixture"), plots[split]["z_spec"],
                                          plots[split]["pit"], int(cfg["calibration_knots"]),
                                          int(cfg["calibration_nodes"]))
                metrics.update(calibration_metrics(plots[split], prefix))
        reg.log_metrics(metrics)
        figure = out_dir / "zphot_vs_zspec_test.png"
        if "test" in plots:
            zphot_figure(plots["test"]["z_spec"], plots["test"]["z_phot"], figure,
                         f"{model_name} ({cfg['band_set']}), test split",
                         {"n": counts["test"], "sigma_nmad": metrics["test_sigma_nmad"], "f_out": metrics["test_f_out"]})
            reg.log_artifact(str(figure), "plots")
        model_dir = out_dir / "model"
        save_model_files(model_dir, model.state_dict(),
                         {"model_config": mcfg, "layout": feed.layout, "stats": feed.stats, "metrics": metrics,
                          "trained": {"epochs_run": dist["epochs_run"], "best_epoch": dist["best_epoch"],
                                      "stopped_early": dist["stopped_early"], "max_epochs": cfg["max_epochs"]},
                          **({"calibration": calibration.to_dict()} if calibration else {}),
                          **({"ensemble": cfg["ensemble"]} if cfg["ensemble"] > 1 else {})}, registry)
        sample = _signature_sample(registry, feed.layout)
        prediction = PhotozModel(model_dir, registry).predict_table(pa.Table.from_pandas(sample, preserve_index=False))
        model_uri = reg.log_model(model_dir, sample, prediction)
        promotion = reg.register_and_promote(model_uri, model_name, run.info.run_id, metrics["val_crps"],
                                             config["mlflow"]["alias"])
        reg.set_tag("promotion", promotion["message"])
    clean_run_dir(out_dir)
    return {"tracking_uri": uri, "run_id": run.info.run_id, "model_name": model_name, "counts": counts,
            "metrics": metrics, "promotion": promotion, "resumed": resumed, "distributed": dist,
            "epochs": len(history), "seconds": {"train": t_train, "total": time.time() - t0},
            "samples_per_s": float(np.median([h["samples_per_s"] for h in history]))}


def _signature_sample(registry, layout: dict):
    """Two rows of the band set's native columns (for the model's input signature)."""
    import pandas as pd

    band_set = registry.band_set(layout["bands"])
    cols = {}
    for band in band_set.bands:
        cols[band.flux] = [10.0, 1.0]
        cols[band.err] = [1.0, 4.0] if band.err_kind == "ivar" else [0.5, 0.5]
    return pd.DataFrame(cols)
