"""One training per model name at a time: ``train/<model_name>/train.lock`` (``photoz_spark.locks``).

Two trainings of one model name would share its checkpoint folder and MLflow run, and the second
would fail only after training. The second training stops in one line naming the holder before
any work; a killed training's lock is taken over (the lock itself: ``photoz_spark.locks``, shared
with every job's output locks).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from photoz_spark import locks
from photoz_spark.errors import UserError

LOCK_FILE = "train.lock"


class TrainingInProgress(UserError):
    """Another training of the same model name holds its lock."""


def _busy(out_dir: Path, model_name: str):
    def busy(owner: dict) -> UserError:
        return TrainingInProgress(f"model {model_name!r} is already being trained "
                                  f"({locks.describe(Path(out_dir) / LOCK_FILE, owner)}): "
                                  "wait for it to finish or set another mlflow.model_name")
    return busy


def check_free(out_dir: Path, model_name: str) -> None:
    """Refuse early (the job's validate step, before Spark starts) when a live training holds the lock."""
    locks.check_free(Path(out_dir) / LOCK_FILE, _busy(out_dir, model_name))


def acquire(out_dir: Path, model_name: str) -> Path:
    """Take the model's training lock, or raise ``TrainingInProgress`` naming its holder.

    Args:
        out_dir: ``train/<model_name>`` (created).
        model_name: named in the error.

    Returns:
        The lock file's path.
    """
    return locks.acquire(Path(out_dir) / LOCK_FILE, "train", _busy(out_dir, model_name))


@contextmanager
def train_lock(out_dir: Path, model_name: str):
    """``with train_lock(workdir / "train" / name, name): ...``: see ``acquire``."""
    path = acquire(Path(out_dir), model_name)
    try:
        yield path
    finally:
        locks.release(path)
