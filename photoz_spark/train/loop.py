"""The training loop in plain torch: the recipe's optimiser and schedule, early stopping, checkpoint, resume.

Recipes (``train.recipe``, presets in conf/train.yaml):

* ``paper``: Adam (lr 1e-3, batch 128), lr x 0.1 every 50 epochs, early stopping after 20
  epochs without improvement, best weights;
* ``fast``: the same batch, Adam at 2e-3 with a one-epoch linear warm-up then a cosine decay to
  0 at ``max_epochs``, and the mixture head started at the training redshift quantiles
  (``head_init``, applied by the caller: ``BiLSTMMDN.init_head``);
* ``large_batch``: a large batch with the learning rate scaled linearly from its reference
  batch, warm-up, cosine, AdamW and gradient clipping.

The learning rate is a pure function of (epoch, step in epoch) (``lr_at``), set before each
optimizer step: a resumed run follows the same schedule as an unbroken one.

Runs alone on CPU or GPU, or as one rank of a torch.distributed job (TorchDistributor):
under DDP every rank must take the same number of steps per epoch, which the feeding layer
guarantees, and the validation loss is all-reduced so every rank makes the same
early-stopping decision.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import distributed as dist

from photoz_spark import faults
from photoz_spark.model import mdn
from photoz_spark.model.network import BiLSTMMDN

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # features [B, T*C], observed [B, T], z [B]


OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("step", "cosine")
HEAD_INITS = ("torch", "quantiles")
LR_REFERENCE_BATCH = 128          # "linear" lr scaling: lr is the rate at this batch size
AUTOCASTS = ("auto", "none", "bf16", "fp16")


@dataclass
class TrainSettings:
    """Defaults are the paper's recipe; conf/train.yaml holds both recipes' presets."""

    max_epochs: int = 200
    batch_size: int = 128         # the GLOBAL batch: all ranks together take one optimizer step on it
    lr: float = 1e-3              # at LR_REFERENCE_BATCH when lr_scaling is "linear"
    lr_scaling: str = "none"      # "linear": lr x batch_size / LR_REFERENCE_BATCH
    optimizer: str = "adam"       # adam | adamw
    weight_decay: float = 0.0     # decoupled (AdamW); adam: none
    beta1: float = 0.9
    beta2: float = 0.999
    schedule: str = "step"        # step: lr x lr_gamma every lr_step_epochs; cosine: to 0 at max_epochs
    lr_step_epochs: int = 50
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0    # linear warm-up from 0 over this many epochs, at most max_epochs / 10
    grad_clip: float = 0.0        # max global gradient norm; 0 = no clipping
    patience: int = 20            # epochs without validation improvement before stopping
    seed: int = 0
    autocast: str = "auto"        # auto | none | bf16 | fp16 (resolve_autocast); mixture head and loss stay fp32
    head_init: str = "torch"      # torch: PyTorch's default (the paper's) | quantiles: BiLSTMMDN.init_head

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.lr_scaling not in ("none", "linear"):
            raise ValueError(f"train.lr_scaling must be none or linear, got {self.lr_scaling!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"train.head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")
        if self.autocast not in AUTOCASTS:
            raise ValueError(f"train.autocast must be one of {', '.join(AUTOCASTS)}, got {self.autocast!r}")

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up (scaled to the batch size when lr_scaling is linear)."""
        return self.lr * (self.batch_size / LR_REFERENCE_BATCH if self.lr_scaling == "linear" else 1.0)


def lr_at(settings: TrainSettings, epoch: float) -> float:
    """The learning rate at a (fractional) epoch: ``epoch + step / steps_per_epoch``.

    Args:
        settings: the recipe.
        epoch: epochs completed, fractional within an epoch (0 = the first step).

    Returns:
        The rate to use for the optimizer step taken at ``epoch``.
    """
    peak = settings.peak_lr
    warmup = min(settings.warmup_epochs, settings.max_epochs / 10)  # a short run (demo, test) still trains
    if warmup > 0 and epoch < warmup:
        return peak * (epoch + 1e-3) / warmup  # never exactly 0: the first step moves
    if settings.schedule == "step":
        return peak * settings.lr_gamma ** int(epoch // settings.lr_step_epochs)
    span = max(settings.max_epochs - warmup, 1e-9)
    progress = min(max((epoch - warmup) / span, 0.0), 1.0)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    precision: str = "none"       # the autocast the network trained in (resolve_autocast)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank(group=None) -> int:
    return dist.get_rank(group) if _distributed() else 0


def _world(group=None) -> int:
    """Ranks that train this network together: the whole job, or (parallel ensemble members) the
    member's process group."""
    return dist.get_world_size(group) if _distributed() else 1


def resolve_autocast(setting: str, device_type: str, bf16_supported: bool) -> str:
    """The network's training precision for ``train.autocast``.

    Args:
        setting: auto | none | bf16 | fp16.
        device_type: ``cpu`` or ``cuda``.
        bf16_supported: the GPU computes in bfloat16 (``torch.cuda.is_bf16_supported()``).

    Returns:
        ``none`` (fp32), ``bf16`` or ``fp16``. auto: fp32 on CPU (half autocast is slower there),
        bf16 on GPUs that have it (no loss scaling needed), else fp16 (with ``needs_scaler``).
    """
    if setting != "auto":
        return setting
    if device_type != "cuda":
        return "none"
    return "bf16" if bf16_supported else "fp16"


def needs_scaler(precision: str) -> bool:
    """fp16 gradients underflow without loss scaling (torch.amp.GradScaler); bf16 and fp32 do not."""
    return precision == "fp16"


def device_precision(settings: TrainSettings, device: torch.device) -> str:
    """``resolve_autocast`` for ``device``."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return resolve_autocast(settings.autocast, device.type, bf16)


def _autocast(device: torch.device, kind: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable[Batch], device, autocast: str = "none",
                  group=None) -> float:
    """Mean NLL over batches (all-reduced across the ranks of ``group`` under DDP; None: all ranks)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for features, observed, z in batches:
        features, observed, z = features.to(device), observed.to(device), z.to(device)
        with _autocast(device, autocast):
            logits, mu, sigma = model(features, observed)
        loss = mdn.nll(logits, mu, sigma, z.float())
        total += torch.stack([loss.double().sum(), torch.tensor(float(len(z)), dtype=torch.float64, device=device)])
    if _world(group) > 1:
        dist.all_reduce(total, group=group)
    if total[1] == 0:
        raise ValueError("the validation split is empty: nothing to evaluate early stopping on")
    return float(total[0] / total[1])


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint


def to_cpu(obj):
    """A copy of a (nested) state with every tensor copied to the CPU: the device keeps training
    (and the optimizer updates its tensors in place) while a thread writes the copy."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


class CheckpointWriter:
    """Writes checkpoints in a background thread, one at a time, so an epoch does not wait for the
    disk: ``save`` copies the state to the CPU (the only part the epoch waits for) and returns;
    the next ``save`` or ``close`` waits for the previous write and raises its error, if any."""

    def __init__(self, path: Path):
        self.path = path
        self._thread = None
        self._error: BaseException | None = None

    def save(self, state: dict) -> None:
        snapshot = to_cpu(state)
        self.wait()

        def write():
            try:
                _save_checkpoint(self.path, snapshot)
            except BaseException as err:  # noqa: BLE001 - raised by the next wait()
                self._error = err
                return
            faults.point("train.checkpoint")  # tests: killed mid-training, a checkpoint behind it

        import threading
        self._thread = threading.Thread(target=write, name="photoz-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    close = wait


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """Adam or AdamW at the recipe's peak rate (the schedule rescales it every step)."""
    kind = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    extra = {"weight_decay": settings.weight_decay} if settings.optimizer == "adamw" else {}
    return kind(model.parameters(), lr=settings.peak_lr, betas=(settings.beta1, settings.beta2), **extra)


def train(model: BiLSTMMDN, train_batches: Callable[[int], Iterable[Batch]],
          val_batches: Callable[[], Iterable[Batch]], settings: TrainSettings, *,
          device: str | torch.device = "cpu", checkpoint: str | Path | None = None,
          on_epoch: Callable[[dict], None] | None = None, steps_per_epoch: int | None = None,
          group=None) -> TrainResult:
    """Train ``model`` with the settings' recipe; resume from ``checkpoint`` if it exists.

    Args:
        model: the network (moved to ``device`` here; wrapped in DDP when torch.distributed is up).
        train_batches: epoch -> iterable of standardised training batches (same length on every rank;
            under DDP each rank's batch is ``settings.batch_size // world`` rows).
        val_batches: () -> iterable of validation batches.
        settings: optimiser, schedule, early stopping, seed, autocast.
        device: where to train.
        checkpoint: a file written every epoch (rank 0) and read at start to resume after a kill.
        on_epoch: called with each epoch's record (epoch, train_loss, val_loss, lr, seconds, samples_per_s).
        steps_per_epoch: optimizer steps per epoch, for warm-up and the cosine schedule within an
            epoch; None: the rate changes only between epochs (enough for the step schedule).
        group: the torch.distributed process group that trains this network (a parallel ensemble
            member's ranks); None: every rank of the job. A group of one rank trains without DDP.
    Returns:
        TrainResult with the best weights (lowest validation NLL), restored into ``model`` too.
    """
    device = torch.device(device)
    checkpoint = Path(checkpoint) if checkpoint else None
    torch.manual_seed(settings.seed)
    model.to(device)
    net = torch.nn.parallel.DistributedDataParallel(model, process_group=group) if _world(group) > 1 else model
    opt = make_optimizer(model, settings)
    precision = device_precision(settings, device)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler(precision))
    state = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": -1, "bad_epochs": 0, "history": [],
             "best_state": copy.deepcopy(model.state_dict())}
    if checkpoint and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):  # the loss scale reached so far (fp16); older checkpoints have none
            scaler.load_state_dict(saved["scaler"])
        state = saved["loop"]
    writer = CheckpointWriter(checkpoint) if checkpoint and _rank(group) == 0 else None
    try:
        stopped = _epochs(net, model, opt, scaler, state, train_batches, val_batches, settings, device, precision,
                          writer, on_epoch, steps_per_epoch, group)
    finally:
        if writer is not None:
            writer.close()
    model.load_state_dict(state["best_state"])
    return TrainResult(best_state=state["best_state"], best_epoch=state["best_epoch"],
                       best_val_loss=state["best_val_loss"], epochs_run=state["epoch"],
                       history=state["history"], stopped_early=stopped, precision=precision)


def _epochs(net, model, opt, scaler, state, train_batches, val_batches, settings, device, precision,
            writer, on_epoch, steps_per_epoch, group=None) -> bool:
    """The epochs of ``train`` from ``state`` on; True when early stopping ended them."""
    while state["epoch"] < settings.max_epochs:
        epoch = state["epoch"]
        torch.manual_seed(settings.seed + epoch)  # per-epoch seed: a resumed run equals an unbroken one
        record = _run_epoch(net, opt, train_batches(epoch), device, settings, epoch, steps_per_epoch,
                            precision, scaler)
        record["val_loss"] = evaluate_loss(net, val_batches(), device, precision, group)
        record["epoch"] = epoch
        state["history"].append(record)
        if record["val_loss"] < state["best_val_loss"]:
            state.update(best_val_loss=record["val_loss"], best_epoch=epoch, bad_epochs=0,
                         best_state=copy.deepcopy(model.state_dict()))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if writer is not None:
            writer.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                         "loop": state})
        if on_epoch:
            on_epoch(record)
        if state["bad_epochs"] >= settings.patience:
            return True
    return False


def _run_epoch(net, opt, batches: Iterable[Batch], device, settings: TrainSettings, epoch: int,
               steps_per_epoch: int | None, precision: str = "none", scaler=None) -> dict:
    net.train()
    t0, n_seen = time.perf_counter(), 0
    total = torch.zeros((), dtype=torch.float64, device=device)
    lr = lr_at(settings, epoch)
    for step, (features, observed, z) in enumerate(batches):
        lr = lr_at(settings, epoch + (step / steps_per_epoch if steps_per_epoch else 0.0))
        for group in opt.param_groups:
            group["lr"] = lr
        features, observed, z = (features.to(device, non_blocking=True), observed.to(device, non_blocking=True),
                                 z.to(device, non_blocking=True))
        with _autocast(device, precision):
            logits, mu, sigma = net(features, observed)
        loss = mdn.nll(logits, mu, sigma, z.float()).mean()
        opt.zero_grad(set_to_none=True)
        _step(loss, net, opt, scaler, settings.grad_clip)
        total += loss.detach().double() * len(z)
        n_seen += len(z)
    if not torch.isfinite(total):  # checked once per epoch: a per-step check would sync the GPU
        raise FloatingPointError("training loss is not finite: check the features for NaN/inf")
    seconds = time.perf_counter() - t0
    return {"train_loss": float(total) / max(n_seen, 1), "seconds": seconds, "lr": lr,
            "samples_per_s": n_seen / seconds if seconds > 0 else 0.0}


def _step(loss, net, opt, scaler, grad_clip: float) -> None:
    """backward + (clip) + optimizer step, through the GradScaler when it is enabled (fp16): the
    loss is scaled up so small gradients survive fp16, unscaled before clipping, and a step whose
    gradients overflowed is skipped (the scale then shrinks)."""
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        return
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
