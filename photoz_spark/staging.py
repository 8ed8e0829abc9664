"""Stage a job's outputs, then commit them all at the end: all-or-nothing, rerun replaces.

The staging folder is ``<workdir>/.<job>-staging-<host>-<pid>-<uuid>``: the owner in the name lets
``commit.recover`` remove it when a killed job left it behind. ``commit`` is one journaled commit
of every output (``commit.commit_renames``), so a kill mid-commit is finished or rolled back by
the next job, never left half done. Each output is locked from ``output`` to the end
(``locks.lock_output``): a second job writing the same output meanwhile is refused in one line.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from photoz_spark import commit as commits
from photoz_spark import hats, locks
from photoz_spark.errors import OutputExists


class JobStaging:
    """A hidden folder under the work directory where a job writes everything it produces."""

    def __init__(self, root: Path, job: str):
        self.root, self.job = Path(root), job
        self.path = self.root / commits.unique_name(f".{job}-staging")
        self._commits: list[tuple[Path, Path, Callable[[Path], None]]] = []
        self._locks: list[Path] = []

    def output(self, name: str, target: Path, check: Callable[[Path], None] = hats.check_replaceable) -> Path:
        """A staging folder for one output that ``commit`` will move to ``target``.

        Args:
            name: the output's folder name inside the staging folder.
            target: where ``commit`` puts it.
            check: raises if ``target`` holds something this output may not replace (default: anything
                but an earlier HATS catalog or an empty folder; ``earlier_output`` for other outputs).
                Run here, before any work, and again at the commit.
        """
        check(Path(target))
        # One writer per output: a second job writing it (still running) is refused here, naming it.
        self._locks.append(locks.lock_output(Path(target), self.job))
        staged = self.path / name
        self._commits.append((staged, Path(target), check))
        return staged

    def release(self) -> None:
        """Release the outputs' locks (``job_staging`` does, whatever happened)."""
        for lock in self._locks:
            locks.release(lock)
        self._locks.clear()

    def commit(self) -> None:
        """Move every staged output into place, replacing earlier ones (after all succeeded), as
        one journaled commit: a kill part-way is finished or undone by the next job's ``recover``."""
        for _, target, check in self._commits:
            check(target)  # every refusal before the first rename
        commits.commit_renames(self.root, self.job, [(staged, target) for staged, target, _ in self._commits])


def earlier_output(marker: str, what: str) -> Callable[[Path], None]:
    """A ``JobStaging.output`` check for an output that is not a HATS catalog (a report, a qp export).

    Args:
        marker: a file every such output holds (``report.md``, ``export.json``).
        what: the output's kind, for the message.

    Returns:
        ``check(target)``: raises ``OutputExists`` unless ``target`` is absent, an empty folder or
        an earlier output of this kind.
    """
    def check(target: Path) -> None:
        if os.path.lexists(target) and not (target / marker).is_file() and not (
                target.is_dir() and not any(target.iterdir())):
            raise OutputExists(f"{target} exists and is not an earlier {what} (no {marker}); refusing to replace it")

    return check


@contextmanager
def job_staging(root: Path, job: str):
    """``with job_staging(workdir.root, "crossmatch") as stage: ... stage.commit()``.

    The staging folder is removed and the outputs' locks released in every case; outputs not
    committed are discarded.
    """
    stage = JobStaging(root, job)
    stage.path.mkdir(parents=True, exist_ok=True)
    try:
        yield stage
    finally:
        shutil.rmtree(stage.path, ignore_errors=True)
        stage.release()
