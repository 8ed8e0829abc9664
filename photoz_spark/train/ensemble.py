"""Deep ensembles in training: M members trained at once or one after another, combined into one model.

With ``train.ensemble: M`` > 1 (conf/train.yaml), member i trains with seed ``train.seed + i``
(its initial weights and its batch order) in ``member-<i>/`` of the model's run folder, through
the same distributed path as a single model (``run.run_distributed``: TorchDistributor ranks, a
checkpoint every epoch). ``train.ensemble_parallel`` (``parallel_members``) decides how:

* parallel: ONE launch of N ranks split into M process groups of N/M ranks; group i trains
  member i under DDP over its own ranks (its global batch is still ``train.batch_size``, each
  member still sees the whole train split every epoch) with its own early stopping;
* sequential: each member in turn on all N ranks.

A member that finished leaves ``result.json``: a rerun after a kill skips it and resumes the
member(s) that were training from their checkpoints, in either mode.

The members' best weights then form one ``model.ensemble.EnsembleMDN`` whose state dict is
written to the run folder's ``best.pt`` (with every member's epochs in ``history.jsonl``), so
``run.train_and_register`` evaluates, logs and registers it exactly as a single network. Each
member is also evaluated on its own here, so the ensemble's gain is on record (MLflow metrics
``member<i>_<split>_<metric>``, and the job's summary).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from photoz_spark.config import ConfigError

MEMBER_RESULT = "result.json"
MEMBER_METRICS = ("sigma_nmad", "f_out", "crps", "pit_ks")


def member_dir(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / f"member-{index}"


def parallel_members(setting, members: int, ranks: int, use_gpu: bool, backend: str, cores: int) -> bool:
    """Whether the M members train at once, one process group of N/M ranks each (``train.ensemble_parallel``).

    Parallel needs N >= M ranks with N a multiple of M (every member the same number of ranks, so
    the same global batch split) and the arrow backend (petastorm's shards are materialised for N
    ranks of one network). ``auto`` takes it where it wins: with GPUs (one rank per GPU, no member
    waits for another's GPU) or when the N ranks fit the CPU cores (N <= cores): on 2 cores, N=2
    and M=2 it took 0.54x the sequential path's CPU s and 0.43x its wall time (one launch instead
    of M, no gradient all-reduce; bench/ensemble_parallel.py, bench/RESULTS.md).

    Args:
        setting: ``train.ensemble_parallel`` (auto, True, False).
        members: M (``train.ensemble``).
        ranks: N, the ranks the job runs (after ``run.gpu_plan``).
        use_gpu: the ranks run on GPUs.
        backend: ``train.backend``.
        cores: CPU cores of the machine the ranks run on.

    Returns:
        True: one launch, members in parallel; False: members one after another.

    Raises:
        ConfigError: ``true`` with ranks that do not split into M equal groups, or petastorm.
    """
    if members <= 1 or setting is False:
        return False
    why = ("" if ranks >= members and ranks % members == 0 else
           f"{ranks} ranks (train.num_processes) do not split into {members} equal groups (train.ensemble)")
    why = why or ("" if backend == "arrow" else "train.backend=petastorm feeds one network's ranks only")
    if setting is True:
        if why:
            raise ConfigError(f"train.ensemble_parallel=true but {why}: use train.ensemble_parallel=auto or false")
        return True
    return not why and (use_gpu or ranks <= cores)


def member_finished(folder: Path, resume: bool) -> bool:
    """Whether a member's folder holds a finished member to keep (a resumed run only): its
    ``result.json`` (written last) and best weights."""
    return resume and (Path(folder) / MEMBER_RESULT).is_file() and (Path(folder) / "best.pt").is_file()


def has_progress(out_dir: Path, members: int) -> bool:
    """Whether an interrupted run left something to resume: the single network's checkpoint, or
    (ensemble) a finished or checkpointed member."""
    out_dir = Path(out_dir)
    if members == 1:
        return (out_dir / "checkpoint.pt").is_file()
    return any((member_dir(out_dir, i) / name).is_file()
               for i in range(members) for name in ("checkpoint.pt", MEMBER_RESULT))


def clear_members(out_dir: Path) -> None:
    """A fresh (not resumed) run starts every member from scratch."""
    for folder in Path(out_dir).glob("member-*"):
        shutil.rmtree(folder, ignore_errors=True)


def member_metrics(model, splits: dict) -> dict:
    """sigma_NMAD, f_out, mean CRPS and PIT KS of one network on each split of ``splits``
    ({"val": FeatureData, "test": ...}), keyed ``<split>_<metric>`` as training logs them."""
    from photoz_spark.train.run import calibration_metrics, evaluate_split

    out = {}
    for prefix, data in splits.items():
        metrics, arrays = evaluate_split(model, data)
        metrics["pit_ks"] = calibration_metrics(arrays, prefix)[f"{prefix}_pit_ks"]
        out.update({f"{prefix}_{k}": float(metrics[k]) for k in MEMBER_METRICS})
    return out


def _load_member(folder: Path, mcfg: dict):
    import torch

    from photoz_spark.model import BiLSTMMDN, ModelConfig

    network = BiLSTMMDN(ModelConfig(**mcfg))
    network.load_state_dict(torch.load(folder / "best.pt", weights_only=True))
    return network


def _log_member_history(tracking: dict | None, index: int, folder: Path) -> None:
    """Member i's per-epoch NLLs as ``member<i>_train_nll`` / ``member<i>_val_nll`` (its ranks log nothing:
    the members' epochs would interleave under one name)."""
    if not tracking:
        return
    from photoz_spark.registry.tracking import epoch_logger

    log = epoch_logger(tracking["uri"], tracking["run_id"])
    for line in (folder / "history.jsonl").read_text().splitlines():
        record = json.loads(line)
        log(f"member{index}_train_nll", record["train_loss"], step=record["epoch"])
        log(f"member{index}_val_nll", record["val_loss"], step=record["epoch"])


def train_member(spark, features_dir: Path, out_dir: Path, cfg: dict, mcfg: dict, index: int, feed=None,
                 tracking: dict | None = None) -> dict:
    """Train member ``index`` (seed ``train.seed + index``) unless it finished already.

    Returns:
        Its ``run_distributed`` result plus ``seed`` (read back from ``result.json`` when skipped).
    """
    from photoz_spark.train.run import run_distributed

    folder = member_dir(out_dir, index)
    done = folder / MEMBER_RESULT
    if member_finished(folder, cfg["resume"]):
        print(f"ensemble member {index}: finished in an earlier run, kept", flush=True)
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"]) + index
    print(f"ensemble member {index} of {cfg['ensemble']}: seed {seed}", flush=True)
    result = {**run_distributed(spark, features_dir, folder, {**cfg, "seed": seed}, mcfg, feed), "seed": seed}
    _log_member_history(tracking, index, folder)
    done.write_text(json.dumps(result))  # last: a kill before this retrains (resumes) the member
    return result


def train_parallel(spark, features_dir: Path, out_dir: Path, cfg: dict, mcfg: dict, plan,
                   tracking: dict | None = None) -> list[dict]:
    """Train every member not finished yet in ONE TorchDistributor launch, a process group per member.

    Args:
        plan: the session's ``run.GpuPlan`` (N ranks, GPUs or not).
        others: see ``train_members``.

    Returns:
        Each member's result, as ``train_member`` returns it (``result.json``).
    """
    from photoz_spark.train.run import MEMBER_RANK_RESULT, PARALLEL_MEMBERS, run_distributed

    members = cfg["ensemble"]
    todo = [i for i in range(members) if not member_finished(member_dir(out_dir, i), cfg["resume"])]
    for i in range(members):
        if i not in todo:
            print(f"ensemble member {i}: finished in an earlier run, kept", flush=True)
    if todo:
        for i in todo:
            member_dir(out_dir, i).mkdir(parents=True, exist_ok=True)
            (member_dir(out_dir, i) / MEMBER_RANK_RESULT).unlink(missing_ok=True)
        print(f"ensemble members {todo} of {members} in parallel: {plan.num_processes // members} rank(s) each, "
              f"seeds {[int(cfg['seed']) + i for i in todo]}", flush=True)
        launch = run_distributed(spark, features_dir, out_dir, {**cfg, PARALLEL_MEMBERS: members}, mcfg)
        for i in todo:
            folder = member_dir(out_dir, i)
            result = {**json.loads((folder / MEMBER_RANK_RESULT).read_text()),
                      **{k: launch[k] for k in ("use_gpu", "local_mode")},
                      "num_processes": launch["num_processes"] // members, "seed": int(cfg["seed"]) + i}
            _log_member_history(tracking, i, folder)
            (folder / MEMBER_RESULT).write_text(json.dumps(result))  # last, as in train_member
    return [json.loads((member_dir(out_dir, i) / MEMBER_RESULT).read_text()) for i in range(members)]


def combined_result(results: list[dict]) -> dict:
    """The ensemble's training record in a single model's shape: the longest member's epochs, early
    stopped only if every member was; each member's record under ``members``."""
    return {**{k: results[-1][k] for k in ("use_gpu", "local_mode", "num_processes")},
            "best_epoch": max(r["best_epoch"] for r in results),
            "epochs_run": max(r["epochs_run"] for r in results),
            "stopped_early": all(r["stopped_early"] for r in results),
            "best_val_loss": float(np.mean([r["best_val_loss"] for r in results])),
            "members": results}


def train_members(spark, features_dir: Path, out_dir: Path, cfg: dict, mcfg: dict, feed=None,
                  tracking: dict | None = None) -> dict:
    """Train the ``train.ensemble`` members, evaluate each, and leave the ensemble in ``out_dir``.

    Args:
        spark: the session (TorchDistributor).
        features_dir: the features catalog.
        out_dir: the model's run folder: members train in ``member-<i>/``; the ensemble's state dict
            goes to ``best.pt`` and every member's epochs (tagged ``member``) to ``history.jsonl``.
        cfg: resolved ``train`` settings (``ensemble`` = M > 1; ``ensemble_parallel``: see ``parallel_members``).
        mcfg: the members' ModelConfig fields.
        feed: see ``run.train_rank``.
        tracking: {"uri", "run_id"} of the MLflow run, for the members' per-epoch NLLs.

    Returns:
        ``combined_result`` of the members, each with its validation and test metrics
        (``val_crps``, ``test_crps``, ...; also logged as ``member<i>_<metric>``).
    """
    import os

    import torch

    from photoz_spark.model.ensemble import EnsembleMDN
    from photoz_spark.registry import tracking as reg
    from photoz_spark.train.feeding import ArrowFeed
    from photoz_spark.train.run import session_gpu_plan

    out_dir = Path(out_dir)
    plan = session_gpu_plan(spark, cfg)
    if parallel_members(cfg["ensemble_parallel"], cfg["ensemble"], plan.num_processes, plan.use_gpu, cfg["backend"],
                        os.cpu_count() or 1):
        results = train_parallel(spark, features_dir, out_dir, cfg, mcfg, plan, tracking)
    else:
        results = [train_member(spark, features_dir, out_dir, cfg, mcfg, i, feed, tracking)
                   for i in range(cfg["ensemble"])]
    networks = [_load_member(member_dir(out_dir, i), mcfg) for i in range(cfg["ensemble"])]
    arrow = ArrowFeed(features_dir)
    splits = {prefix: arrow.load(split) for prefix, split in (("val", "validation"), ("test", "test"))
              if arrow.count(split)}
    history = []
    for i, (network, result) in enumerate(zip(networks, results, strict=True)):
        result.update(member_metrics(network, splits))
        if tracking:
            reg.log_metrics({f"member{i}_{k}": v for k, v in result.items() if k.startswith(("val_", "test_"))})
        lines = (member_dir(out_dir, i) / "history.jsonl").read_text().splitlines()
        history += [{**json.loads(line), "member": i} for line in lines]
    torch.save(EnsembleMDN.from_members(networks).state_dict(), out_dir / "best.pt")
    (out_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return combined_result(results)
