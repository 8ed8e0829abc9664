"""One training per model name at a time: ``train/<model_name>/train.lock``.

Two trainings of one model name would share its checkpoint folder and MLflow run, and the second
would fail only after training. The lock is created with ``O_EXCL`` and holds the owner's pid,
host and start time; a second training finds it and stops in one line before any work. A lock
left by a killed training (its pid is dead on this host) is taken over; a lock of another host
cannot be checked and is reported with its path, to delete by hand if that training is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from photoz_spark.commit import HOST, owner_alive
from photoz_spark.errors import UserError

LOCK_FILE = "train.lock"
# A lock file that is still empty this long after its creation lost its writer (killed between
# the create and the write).
EMPTY_LOCK_SECONDS = 30


class TrainingInProgress(UserError):
    """Another training of the same model name holds its lock."""


def _holder(path: Path) -> dict | None:
    """The lock's owner; None when the lock is gone. An unreadable lock counts as alive while new."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"pid": -1, "host": HOST, "started": "?", "stale": age > EMPTY_LOCK_SECONDS}


def _stale(holder: dict) -> bool:
    return holder.get("stale", False) or (holder["pid"] >= 0 and not owner_alive(holder["host"], holder["pid"]))


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), "host": HOST, "started": datetime.now(UTC).isoformat(timespec="seconds")}, fh)
    return True


def _refuse(path: Path, holder: dict, model_name: str) -> None:
    where = "on this host" if holder["host"] == HOST else f"on host {holder['host']} (delete {path} if it is gone)"
    raise TrainingInProgress(f"model {model_name!r} is already being trained (pid {holder['pid']} {where}, since "
                             f"{holder['started']}; lock {path}): wait for it to finish or set another mlflow.model_name")


def check_free(out_dir: Path, model_name: str) -> None:
    """Refuse early (the job's validate step, before Spark starts) when a live training holds the lock."""
    holder = _holder(Path(out_dir) / LOCK_FILE)
    if holder is not None and not _stale(holder) and holder.get("pid") != os.getpid():
        _refuse(Path(out_dir) / LOCK_FILE, holder, model_name)


def acquire(out_dir: Path, model_name: str) -> Path:
    """Take the model's training lock, or raise ``TrainingInProgress`` naming its holder.

    Args:
        out_dir: ``train/<model_name>`` (created).
        model_name: named in the error.

    Returns:
        The lock file's path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    while not _try_create(path):
        with open(out_dir / ".train.lock.takeover", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one taker at a time: none removes a lock just taken
            holder = _holder(path)
            if holder is not None and not _stale(holder):
                _refuse(path, holder, model_name)
            if holder is not None:
                path.unlink(missing_ok=True)  # a killed training's lock
    return path


def release(path: Path) -> None:
    """Remove the lock if it is still this process's (training may have removed its folder already)."""
    holder = _holder(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == HOST:
        path.unlink(missing_ok=True)


@contextmanager
def train_lock(out_dir: Path, model_name: str):
    """``with train_lock(workdir / "train" / name, name): ...``: see ``acquire``."""
    path = acquire(Path(out_dir), model_name)
    try:
        yield path
    finally:
        release(path)
