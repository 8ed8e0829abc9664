"""Layered YAML configuration: ``conf/pipeline.yaml`` < the job's own file < ``--conf`` < key=value.

Only keys that exist in the defaults may be set; values are coerced to the default's type,
so a typo or a wrong type is refused with a one-line message instead of being ignored.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from photoz_spark import CONF_DIR, PROJECT_DIR
from photoz_spark.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value or key the project does not accept."""


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    return data


def _coerce(key: str, value: Any, default: Any) -> Any:
    # auto-or-value settings: auto | true | false (train.use_gpu), auto | a number (spark.shuffle_partitions)
    if default == "auto" and isinstance(value, (bool, int)):
        return value
    # bool is a subclass of int in Python: keep true/false and numbers strictly apart.
    if isinstance(default, bool) != isinstance(value, bool) and default is not None:
        raise ConfigError(f"{key}: expected {'true/false' if isinstance(default, bool) else type(default).__name__}, "
                          f"got {value!r}")
    if default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str) and isinstance(value, (int, float)):
        return str(value)
    raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}")


def free_maps(config: dict, prefix: str = "") -> frozenset[str]:
    """The dotted keys whose default is an empty mapping (``ingest.columns: {}``): they take any keys."""
    found: set[str] = set()
    for key, value in config.items():
        if isinstance(value, dict):
            found |= {f"{prefix}{key}"} if not value else free_maps(value, f"{prefix}{key}.")
    return frozenset(found)


def merge(base: dict, overlay: dict, prefix: str = "", free: frozenset[str] = frozenset()) -> dict:
    """Overlay ``overlay`` onto a copy of ``base``, refusing keys that ``base`` lacks.

    A mapping named in ``free`` (``free_maps`` of the defaults) takes any keys, and values as given.
    """
    out = copy.deepcopy(base)
    if prefix.rstrip(".") in free:
        if not isinstance(overlay, dict):
            raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping, got {overlay!r}")
        out.update(copy.deepcopy(overlay))
        return out
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            allowed = ", ".join(f"{prefix}{k}" for k in out)
            raise ConfigError(f"unknown config key {dotted!r}; allowed here: {allowed}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping, got {value!r}")
            out[key] = merge(out[key], value, prefix=f"{dotted}.", free=free)
        else:
            out[key] = _coerce(dotted, value, out[key])
    return out


def overlay_defaults(shared: dict, job: dict) -> dict:
    """A job's defaults file on the shared ones: it adds its own sections and keys, and may
    restate a shared key (e.g. ``mlflow.experiment``) to give the job another default."""
    out = copy.deepcopy(shared)
    for key, value in job.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay_defaults(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict:
    """``a.b=value`` -> ``{"a": {"b": value}}``, the value parsed as YAML (so 3, 0.5, true, [a,b])."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. sim.n_quasars=1000)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: dict = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def load_config(job_defaults: str | None = None, conf_file: str | None = None,
                overrides: list[str] | tuple = ()) -> dict:
    """Build a job's configuration.

    Args:
        job_defaults: the job's own defaults file name under ``conf/`` (e.g. "simulate.yaml").
        conf_file: a user file overlaid on the defaults (``--conf``).
        overrides: ``key=value`` strings applied last.
    Returns:
        The merged configuration as a nested dict.
    """
    config = read_yaml(CONF_DIR / "pipeline.yaml")
    if job_defaults:
        config = overlay_defaults(config, read_yaml(CONF_DIR / job_defaults))
    free = free_maps(config)
    if conf_file:
        config = merge(config, read_yaml(conf_file), free=free)
    for text in overrides:
        config = merge(config, parse_override(text), free=free)
    return config


def resolve_path(path: str | Path) -> Path:
    """A relative path means the current directory's, unless only the project has it (conf/...)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (PROJECT_DIR / path).exists():
        return (PROJECT_DIR / path).resolve()
    return path.resolve()


def cache_dir(config: dict) -> Path:
    """Where derived data worth keeping between runs lives (keyed by content, safe to share)."""
    if config.get("cache_dir"):
        return resolve_path(config["cache_dir"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "photoz-spark"


def require(condition: bool, message: str) -> None:
    """Refuse an out-of-range setting with a message that says what is allowed."""
    if not condition:
        raise ConfigError(message)

def resolve_recipe(cfg: dict) -> dict:
    """``train`` settings with the chosen recipe's values filled in where a key is null.

    A key set explicitly (``train.batch_size=256``) overrides the recipe; ``recipes`` is dropped.
    """
    if "recipes" not in cfg:  # resolved already, or a plain dict of settings
        return dict(cfg)
    recipes = cfg["recipes"]
    require(cfg.get("recipe") in recipes, f"train.recipe must be one of {', '.join(recipes)}, got {cfg.get('recipe')!r}")
    preset = recipes[cfg["recipe"]]
    out = {k: v for k, v in cfg.items() if k != "recipes"}
    for key, value in preset.items():
        # an explicit value gets the preset's type (YAML 1.1 reads "1e-6" as a string)
        out[key] = value if out.get(key) is None else _coerce(f"train.{key}", out[key], value)
    return out
