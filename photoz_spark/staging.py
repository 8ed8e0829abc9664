"""Stage a job's outputs, then commit them all at the end: all-or-nothing, rerun replaces.

The staging folder is ``<workdir>/.<job>-staging-<host>-<pid>-<uuid>``: the owner in the name lets
``commit.recover`` remove it when a killed job left it behind. ``commit`` is one journaled commit
of every output (``commit.commit_renames``), so a kill mid-commit is finished or rolled back by
the next job, never left half done.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from photoz_spark import commit as commits
from photoz_spark import hats


class JobStaging:
    """A hidden folder under the work directory where a job writes everything it produces."""

    def __init__(self, root: Path, job: str):
        self.root, self.job = Path(root), job
        self.path = self.root / commits.unique_name(f".{job}-staging")
        self._commits: list[tuple[Path, Path]] = []

    def output(self, name: str, target: Path) -> Path:
        """A staging folder for one output that ``commit`` will move to ``target``."""
        staged = self.path / name
        self._commits.append((staged, Path(target)))
        return staged

    def commit(self) -> None:
        """Move every staged output into place, replacing earlier ones (after all succeeded), as
        one journaled commit: a kill part-way is finished or undone by the next job's ``recover``."""
        for _, target in self._commits:
            hats.check_replaceable(target)  # every refusal before the first rename
        commits.commit_renames(self.root, self.job, self._commits)


@contextmanager
def job_staging(root: Path, job: str):
    """``with job_staging(workdir.root, "crossmatch") as stage: ... stage.commit()``.

    The staging folder is removed in every case; outputs not committed are discarded.
    """
    stage = JobStaging(root, job)
    stage.path.mkdir(parents=True, exist_ok=True)
    try:
        yield stage
    finally:
        shutil.rmtree(stage.path, ignore_errors=True)
