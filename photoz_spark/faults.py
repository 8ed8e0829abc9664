"""Fault injection for tests: ``PHOTOZ_FAULT=<point>[:N]`` kills the process at the N-th pass
(default the first) through ``point(<point>)``, with ``os._exit`` (no clean-up, no ``finally``),
as a power cut or ``kill -9`` would.

The points (a name not listed here is refused, so a typo cannot make a test pass vacuously):

- ``commit.rename``: after each single rename of a job commit (``commit.commit_renames``), so
  ``commit.rename:1`` dies between moving the old output aside and putting the new one in place.
- ``hats.pixel_file``: in a write task, after a pixel file's first row group is written (the
  file is half written); on Spark this kills the task's Python worker.
- ``hats.catalog``: on the driver, after every data file of a catalog is written and before its
  metadata (a catalog half written).
- ``train.checkpoint``: in training rank 0, right after an epoch's checkpoint is saved.
- ``export.file``: in the qp export, after each qp file is written (the export half written).

Unset (the normal case) every ``point`` is one dictionary lookup.
"""

from __future__ import annotations

import os
import sys

ENV = "PHOTOZ_FAULT"
EXIT_CODE = 86  # recognisable in tests: the process died at an injected fault
POINTS = ("commit.rename", "hats.pixel_file", "hats.catalog", "train.checkpoint", "export.file")
_passes: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    value = os.environ.get(ENV, "")
    if not value:
        return None
    name, _, count = value.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={value!r}: unknown fault point; known: {', '.join(POINTS)}")
    return name, int(count or 1)


def point(name: str) -> None:
    """Die here (exit code ``EXIT_CODE``) if ``PHOTOZ_FAULT`` names this point and pass count.

    Args:
        name: one of ``POINTS``.
    """
    target = _target()
    if target is None or target[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == target[1]:
        print(f"fault injected: {name} (pass {target[1]}), pid {os.getpid()}", file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)
