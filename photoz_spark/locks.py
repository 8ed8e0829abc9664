"""One writer at a time: a lock file per output (every job's outputs, each model name's training).

Two jobs writing one output (two score_catalog runs with the same ``score.output``, two
crossmatches to the same run name, two trainings of one model name) would mix their files or
replace each other's half-done work. A writer creates the output's lock with ``O_EXCL``; it
holds the owner's pid, host, job and start time. A second writer finds it and stops in one line
naming the holder, before writing anything (no waiting: the user decides). A lock left by a
killed process (its pid is dead on this host) is taken over, and ``commit.recover`` removes it
at the next job's start; a lock of another host cannot be checked and is reported with its path,
to delete by hand if that job is gone.

Where: a job output's lock is ``.<name>.lock`` beside it (``output_lock_path``; the output
folder itself is replaced by the commit's renames), a training's is ``train/<model>/train.lock``
(``train.locks``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from photoz_spark.errors import UserError

HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
LOCK_SUFFIX = ".lock"
# A lock file that is still empty this long after its creation lost its writer (killed between
# the create and the write).
EMPTY_LOCK_SECONDS = 30


class OutputInUse(UserError):
    """Another live process is writing the same output (it holds the output's lock)."""


def owner_alive(host: str, pid: int) -> bool:
    """Whether the process that named a leftover may still be running (another host's: assumed so).

    Args:
        host: the host part of the owner tag.
        pid: its process id.
    """
    if host != HOST or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user: alive
        return True
    return True


def output_lock_path(target: Path) -> Path:
    """The lock of a job's output folder: ``.<name>.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def holder(path: Path) -> dict | None:
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


def stale(owner: dict) -> bool:
    """Whether a lock's owner is gone (a dead pid on this host, or an empty lock grown old)."""
    return owner.get("stale", False) or (owner["pid"] >= 0 and not owner_alive(owner["host"], owner["pid"]))


def describe(path: Path, owner: dict) -> str:
    """``pid N on this host, since T; lock PATH`` (another host's: with how to clear it by hand)."""
    where = "on this host" if owner["host"] == HOST else f"on host {owner['host']} (delete {path} if it is gone)"
    return f"pid {owner['pid']} {where}, since {owner['started']}; lock {path}"


def _try_create(path: Path, job: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), "host": HOST, "job": job,
                   "started": datetime.now(UTC).isoformat(timespec="seconds")}, fh)
    return True


@contextmanager
def _guard(folder: Path):
    """One taker (or remover) of the folder's locks at a time: none removes a lock just taken.
    The folder itself is flocked, so no file is left behind."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def acquire(path: Path, job: str, busy: Callable[[dict], UserError]) -> Path:
    """Take the lock at ``path`` (its folder is created), or raise ``busy(owner)`` naming its holder.

    Args:
        path: the lock file.
        job: the job taking it (recorded for the message a second writer gets).
        busy: makes the one-line error from the live owner's record (``describe`` helps).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while not _try_create(path, job):
        with _guard(path.parent):
            owner = holder(path)
            if owner is not None and not stale(owner):
                raise busy(owner)
            if owner is not None:
                path.unlink(missing_ok=True)  # a killed process's lock
    return path


def check_free(path: Path, busy: Callable[[dict], UserError]) -> None:
    """Refuse early (a job's validate step, before Spark starts) when a live process holds the lock."""
    owner = holder(Path(path))
    if owner is not None and not stale(owner) and owner.get("pid") != os.getpid():
        raise busy(owner)


def release(path: Path) -> None:
    """Remove the lock if it is still this process's (its folder may have been removed already)."""
    owner = holder(Path(path))
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == HOST:
        Path(path).unlink(missing_ok=True)


def remove_if_dead(path: Path) -> bool:
    """Remove a lock whose owner is dead (``commit.recover``); returns whether it was removed."""
    with _guard(path.parent):
        owner = holder(path)
        if owner is None or not stale(owner):
            return False
        path.unlink(missing_ok=True)
        return True


def output_busy(target: Path) -> Callable[[dict], UserError]:
    """The one-line refusal of a second writer of a job output."""
    def busy(owner: dict) -> UserError:
        job = owner.get("job") or "another job"
        return OutputInUse(f"{target} is being written by {job} ({describe(output_lock_path(target), owner)}): "
                           "wait for it to finish or write to another name")
    return busy


def lock_output(target: Path, job: str) -> Path:
    """Take the lock of a job's output folder (``output_lock_path``), or raise ``OutputInUse``."""
    return acquire(output_lock_path(target), job, output_busy(target))
