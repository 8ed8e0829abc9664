"""Stage a job's outputs, then commit them all at the end: all-or-nothing, rerun replaces."""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from photoz_spark import hats


class JobStaging:
    """A hidden folder under the work directory where a job writes everything it produces."""

    def __init__(self, root: Path, job: str):
        self.path = Path(root) / f".{job}-staging-{uuid.uuid4().hex}"
        self._commits: list[tuple[Path, Path]] = []

    def output(self, name: str, target: Path) -> Path:
        """A staging folder for one output that ``commit`` will move to ``target``."""
        staged = self.path / name
        self._commits.append((staged, Path(target)))
        return staged

    def commit(self) -> None:
        """Move every staged output into place, replacing earlier ones (after all succeeded)."""
        for staged, target in self._commits:
            target.parent.mkdir(parents=True, exist_ok=True)
            hats.replace_folder(staged, target)


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
