"""Resume only what was started: the fingerprint of a training run in progress.

``train/<model_name>/fingerprint.json`` records what shapes the weights a checkpoint holds: the
resolved training recipe, the network, the band set, and the identity of the features (their
standardisation statistics and split sizes). A rerun that would resume from the checkpoint
with a different fingerprint is refused in one line naming the changed keys: continuing a run
at another learning rate, or into another network, gives a model no setting describes (the
MLflow run would keep the first run's parameters).

Keys that decide only how or how long the ranks run, not what each step computes, may change
on resume: ``RUN_ONLY_KEYS`` (``max_epochs`` too, except under the cosine schedule, whose rate
depends on it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from photoz_spark.errors import InputError

FINGERPRINT_FILE = "fingerprint.json"
RUN_ONLY_KEYS = frozenset({"resume", "use_gpu", "backend", "num_processes", "recalibrate", "recalibration",
                           "calibration_knots", "calibration_nodes", "patience", "train_rows",
                           "recipe", "ensemble_parallel"})  # recipe: its resolved values are compared


def fingerprint(cfg: dict, model_cfg: dict, layout: dict, stats: dict, counts: dict) -> dict:
    """The settings and data identity a checkpoint depends on, as a flat JSON-able dict.

    Args:
        cfg: the resolved ``train`` settings (``config.resolve_recipe``).
        model_cfg: the network's config (``run.model_config``).
        layout: the features' ``layout.json``.
        stats: the features' ``stats.json`` (the training standardisation).
        counts: rows per split.

    Returns:
        ``{"train.lr": 0.001, ..., "model.hidden1": 128, ..., "band_set": ..., "features": <digest>}``.
    """
    skip = RUN_ONLY_KEYS | ({"max_epochs"} if cfg.get("schedule") != "cosine" else set())
    data = json.dumps({"stats": stats, "bands": layout.get("bands"), "counts": counts}, sort_keys=True)
    out = {f"train.{k}": v for k, v in sorted(cfg.items()) if k not in skip}
    out.update({f"model.{k}": v for k, v in sorted(model_cfg.items())})
    out.update({"band_set": layout.get("band_set"), "bands": list(layout.get("bands", [])),
                "features": hashlib.sha256(data.encode()).hexdigest()[:16]})
    return json.loads(json.dumps(out))  # as it reads back from the file (tuples -> lists)


def changed_keys(old: dict, new: dict) -> list[str]:
    """``key old -> new`` for every key that differs (or exists on one side only)."""
    return [f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_resume(out_dir: Path, current: dict, resuming: bool) -> None:
    """Refuse to resume a checkpoint made with other settings; record the current fingerprint.

    Args:
        out_dir: ``train/<model_name>``, holding the checkpoint.
        current: ``fingerprint(...)`` of this run.
        resuming: whether this run would resume from the checkpoint there.

    Raises:
        InputError: one line naming the changed keys and how to start fresh.
    """
    path = Path(out_dir) / FINGERPRINT_FILE
    if resuming and path.is_file():  # a checkpoint from before fingerprints existed resumes as it did
        diff = changed_keys(json.loads(path.read_text()), current)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise InputError(f"{out_dir} holds the checkpoint of a training with other settings ({shown}): "
                             "rerun with the same settings to resume it, or with train.resume=false to "
                             "discard it and start fresh")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=1))
