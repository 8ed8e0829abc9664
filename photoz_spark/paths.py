"""Path safety: every name that becomes part of an output path, and every output path, is checked.

A job writes only under its work directory, at ``<workdir>/<part>/<name>`` (``catalogs/dr16q``,
``scores/toscore``, ``train/<model>``, ``reports/<model>-v3``). The names come from settings
(``mlflow.model_name``, ``score.output``, ``crossmatch.run``, ...), so a name such as
``../matched/dr16q`` or ``/data/x`` would write outside it or over a job's own input. Names must
match ``SAFE_NAME`` (checked for every job in ``cli.run_job`` before anything starts, the keys are
``NAME_KEYS``), and a job whose output could land on its input checks it with ``check_output``.
A sub-folder of the work directory that is a symlink (e.g. ``scores -> /big/disk/scores``) is
honoured: that is the user's own layout, not a name escaping it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from photoz_spark.errors import InputError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SAFE_NAME_TEXT = "letters, digits, '.', '_' and '-', starting with a letter or digit"
MAX_NAME_LENGTH = 200

# The settings whose values name a folder or file of the work directory (or a registered model,
# whose name is one), per config section: a list value names several.
NAME_KEYS = (
    "mlflow.model_name",
    "score.output",
    "crossmatch.run", "crossmatch.left", "crossmatch.right",
    "ingest.name",
    "export.output",
    "features.matched", "features.band_set", "features.output",
    "train.band_set", "train.features",
    "sim.catalogs",
    "ablation.model_prefix", "ablation.band_sets",
)


def safe_name(value, key: str) -> str:
    """``value`` if it is a safe folder name, else a one-line ``InputError`` naming ``key``.

    Args:
        value: the setting's value.
        key: the setting, e.g. ``score.output``, named in the error.

    Returns:
        The name as a string.
    """
    name = str(value)
    if not SAFE_NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH or name in (".", ".."):
        raise InputError(f"{key} must be a folder name: {SAFE_NAME_TEXT}, at most {MAX_NAME_LENGTH} "
                         f"characters, no '/' or '..' (every output stays inside the work directory); got {name!r}")
    return name


def check_setting_names(config: dict) -> None:
    """Check every ``NAME_KEYS`` setting present in ``config`` (empty values mean "default": skipped).

    Raises:
        InputError: the first unsafe name, naming its key.
    """
    for key in NAME_KEYS:
        section, _, leaf = key.partition(".")
        value = config.get(section, {}).get(leaf) if isinstance(config.get(section), dict) else None
        if value is None or value == "":
            continue
        for item in (value if isinstance(value, list) else [value]):
            safe_name(item, key)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output(output, workdir_root, inputs: Iterable = (), key: str = "output") -> Path:
    """Refuse an output that leaves the work directory or overlaps one of the job's inputs.

    Args:
        output: the folder the job will create or replace.
        workdir_root: the work directory.
        inputs: files or folders the job reads: the output may not be one of them, lie inside
            one, or contain one (replacing it would delete the input).
        key: the setting that chose the output, named in the error.

    Returns:
        The output path, absolute (not resolved: a symlinked output is replaced, not followed).

    Raises:
        InputError: one line naming the output, the input and ``key``.
    """
    root = Path(os.path.abspath(workdir_root))
    target = Path(os.path.abspath(output))
    if not _inside(target, root) or target == root:
        raise InputError(f"{key}: output {target} is outside the work directory {root}")
    # Compare real locations: a symlinked folder must not make an input and the output one place.
    # The output's own name is not followed: replacing a symlink (a linked catalog) replaces the
    # link, never what it points at.
    real = target.parent.resolve() / target.name
    for item in inputs:
        source = Path(os.path.abspath(item))
        real_source = source.resolve()
        if _inside(real_source, real) or _inside(real, real_source):
            raise InputError(f"{key}: output {target} would overwrite the job's input {source}; "
                             "choose another output name")
    return target
