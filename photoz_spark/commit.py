"""Job-level atomic commits: a job's outputs become visible together, or not at all.

A job stages every output in a hidden folder, then ``commit_renames`` moves them into place:

1. a journal ``<workdir>/.commit-<job>-<owner>-<uuid>.journal`` lists every pending rename
   (staged -> target, and old target -> backup), written (and fsynced) before the first rename;
2. each old target is renamed to its backup and each staged output to its target;
3. the journal is marked ``committed``, the backups are deleted and the journal removed.

A process killed during step 2 leaves the journal. ``recover(workdir)``, which ``cli.run_job``
calls before every job, finishes such a commit (every staged output is still complete, so it
rolls forward) or, if a staged output has gone, rolls every target back to its backup: each
target ends up either the whole old or the whole new output, never a mix of two runs. It also
removes staging folders, backups and output locks (``locks``) left by killed processes.

Owners: every staging folder, backup and journal carries ``<host>-<pid>`` (``owner_tag``); only
those of a dead process on this host are touched (a live job's, or another host's, are left alone).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from photoz_spark import faults, locks
from photoz_spark.locks import HOST, owner_alive

JOURNAL_GLOB = ".commit-*.journal"
# '.<name>.staging-<owner>-<uuid>' (hats, beside a target), '.<job>-staging-<owner>-<uuid>' (a job's
# folder, staging.py), '.<name>.old-<owner>-<uuid>' (an earlier output moved aside).
_LEFTOVER = re.compile(r"^\.(?P<name>.+?)[.-](?P<kind>staging|old)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)"
                       r"-[0-9a-f]{32}$")
_LOCK = re.compile(r"^\..+\.lock$")  # an output's lock (locks.output_lock_path)
_JOURNAL = re.compile(r"^\.commit-.+-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[0-9a-f]{32}\.journal(\.tmp)?$")


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as staging, backup and journal names carry it."""
    return f"{HOST}-{os.getpid()}"


def unique_name(prefix: str) -> str:
    """``<prefix>-<owner>-<uuid>``: a hidden working name a later ``recover`` can attribute."""
    return f"{prefix}-{owner_tag()}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Rename:
    """One output of a commit: ``staged`` becomes ``target``; an earlier target goes to ``backup``."""

    staged: Path
    target: Path
    backup: Path | None


def _exists(path: Path | None) -> bool:
    return path is not None and os.path.lexists(path)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _write_journal(journal: Path, job: str, state: str, renames: list[Rename]) -> None:
    """Write the journal whole or not at all (temporary file, fsync, rename)."""
    tmp = journal.with_name(journal.name + ".tmp")
    data = {"job": job, "state": state, "renames": [
        {"staged": str(r.staged), "target": str(r.target), "backup": str(r.backup) if r.backup else None}
        for r in renames]}
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, journal)


def _read_journal(journal: Path) -> tuple[str, list[Rename]]:
    data = json.loads(journal.read_text())
    return data["state"], [Rename(Path(r["staged"]), Path(r["target"]), Path(r["backup"]) if r["backup"] else None)
                           for r in data["renames"]]


def commit_renames(root, job: str, pairs: list[tuple[Path, Path]]) -> None:
    """Move every staged output to its target as one commit (see the module docstring).

    Args:
        root: the work directory (holds the journal).
        job: the job's name, in the journal's name.
        pairs: (staged folder, target) of each output; each staged folder is complete.

    Raises:
        OSError: a rename failed; every target was put back to its earlier state first.
    """
    renames = []
    for staged, target in pairs:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        backup = target.with_name(unique_name(f".{target.name}.old")) if _exists(target) else None
        renames.append(Rename(Path(staged), target, backup))
    journal = Path(root) / f"{unique_name(f'.commit-{job}')}.journal"
    _write_journal(journal, job, "renaming", renames)
    try:
        for r in renames:
            if r.backup is not None:
                os.rename(r.target, r.backup)
                faults.point("commit.rename")
            os.rename(r.staged, r.target)
            faults.point("commit.rename")
    except BaseException:
        _roll_back(renames)
        journal.unlink(missing_ok=True)
        raise
    _write_journal(journal, job, "committed", renames)
    _drop_backups(renames)
    journal.unlink(missing_ok=True)


def _done(r: Rename) -> bool:
    """The new output is at the target (its staged folder is gone and the old one is aside)."""
    return not _exists(r.staged) and _exists(r.target) and (r.backup is None or _exists(r.backup))


def _roll_forward(renames: list[Rename]) -> None:
    for r in renames:
        if _done(r):
            continue
        if _exists(r.target):
            os.rename(r.target, r.backup)  # not yet moved aside (a planned backup exists: see _can_finish)
        os.rename(r.staged, r.target)


def _can_finish(renames: list[Rename]) -> bool:
    """Every output is either in place or still staged with its old target movable aside."""
    return all(_done(r) or (_exists(r.staged) and (not _exists(r.target) or
                                                    (r.backup is not None and not _exists(r.backup))))
               for r in renames)


def _roll_back(renames: list[Rename]) -> None:
    for r in reversed(renames):
        if _done(r):
            _remove(r.target)  # the new output: back to the staging area's fate (removed)
        if _exists(r.backup) and not _exists(r.target):
            os.rename(r.backup, r.target)


def _drop_backups(renames: list[Rename]) -> None:
    for r in renames:
        if _exists(r.backup):
            _remove(r.backup)


def _recover_journal(journal: Path) -> str:
    """Finish or roll back the commit of a dead process; returns what was done."""
    try:
        state, renames = _read_journal(journal)
    except (OSError, ValueError, KeyError):
        journal.unlink(missing_ok=True)  # written atomically: unreadable means not ours to act on
        return "ignored an unreadable journal"
    if state == "committed" or _can_finish(renames):
        _roll_forward(renames)
        verb = "finished"
    else:
        _roll_back(renames)
        verb = "rolled back"
    _drop_backups(renames)
    journal.unlink(missing_ok=True)
    return f"{verb} the interrupted commit of " + ", ".join(str(r.target.name) for r in renames)


def _dead(match: re.Match | None) -> bool:
    return match is not None and not owner_alive(match["host"], int(match["pid"]))


def _clean_leftovers(folder: Path) -> list[str]:
    """Remove dead processes' staging folders and output locks; put a dead process's backup back if
    its target is gone."""
    done = []
    for path in sorted(folder.iterdir()):
        if _LOCK.match(path.name) and path.is_file():
            if locks.remove_if_dead(path):
                done.append(f"removed {path}")
            continue
        match = _LEFTOVER.match(path.name)
        if not _dead(match):
            continue
        target = path.with_name(match["name"])
        if match["kind"] == "old" and not _exists(target):
            os.rename(path, target)  # killed between a replace's two renames: the earlier output returns
            done.append(f"restored {target}")
        else:
            _remove(path)
            done.append(f"removed {path}")
    return done


def recover(root) -> list[str]:
    """Repair what killed jobs left in a work directory (see the module docstring).

    Args:
        root: the work directory (need not exist).

    Returns:
        One line per repair (empty when there was nothing to do).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    done = []
    lock = os.open(root, os.O_RDONLY)  # the folder itself: recovering writes nothing when there is nothing to do
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two jobs starting together must not repair the same commit
        for journal in sorted(root.iterdir()):
            match = _JOURNAL.match(journal.name)
            if _dead(match):
                done.append(_recover_journal(journal) if journal.suffix == ".journal" else f"removed {journal}")
                if journal.suffix == ".tmp":
                    journal.unlink(missing_ok=True)
        for folder in [root, *(p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))]:
            done += _clean_leftovers(folder)
    finally:
        os.close(lock)  # releases the flock
    return done
