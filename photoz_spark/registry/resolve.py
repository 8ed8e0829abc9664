"""The one resolver: registered model ``name`` + alias | version -> its files and its MLflow run.

Training registers, and scoring, evaluation and the ablation all find a model through
``resolve_model`` / ``download_version``. ``ModelFiles`` is what the scorer broadcasts: the
model's two files as bytes, so executors need no registry access.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from photoz_spark.errors import InputError
from photoz_spark.registry.artifact import META_FILE, WEIGHTS_FILE


@dataclass(frozen=True)
class ModelFiles:
    """A model's files as bytes (what is broadcast) and where it came from."""

    name: str
    version: str
    uri: str
    weights: bytes
    meta: bytes
    run_id: str = ""       # the MLflow run that logged it ("" for a local folder)

    @property
    def model_id(self) -> str:
        return hashlib.sha256(self.weights + self.meta).hexdigest()[:16]

    @classmethod
    def from_dir(cls, directory: Path, name: str = "local", version: str = "0", uri: str = "",
                 run_id: str = "") -> ModelFiles:
        directory = Path(directory)
        return cls(name, str(version), uri or str(directory), (directory / WEIGHTS_FILE).read_bytes(),
                   (directory / META_FILE).read_bytes(), run_id)


def resolve_model(config: dict, workdir, section: str) -> tuple[ModelFiles, Path]:
    """Download ``models:/<mlflow.model_name>@<mlflow.alias>`` (or ``/<section.version>``).

    Args:
        config: the job configuration: ``mlflow`` (tracking_uri, experiment, model_name, alias)
            and ``config[section]["version"]`` (a version number wins over the alias).
        workdir: the job's Workdir (the embedded registry lives there).
        section: the job's config section holding ``version`` (score, evaluate), named in errors.

    Returns:
        The model's files (with its run id) and the local folder they were downloaded to.

    Raises:
        ConnectionError: the tracking server does not answer.
        ValueError: no such model, alias or version.
    """
    from photoz_spark.registry import tracking

    shared = config["mlflow"]
    uri = tracking.tracking_uri(config, workdir)
    tracking.connect(uri, workdir, shared["experiment"])
    name, alias, version = shared["model_name"], shared["alias"], str(config[section]["version"] or "")
    return find_version(uri, name, alias=alias, version=version, section=section)


def find_version(uri: str, name: str, alias: str = "", version: str = "", section: str = "") -> tuple[ModelFiles, Path]:
    """``name`` at ``version`` (if given) else at ``alias``, from the registry at ``uri`` (connected).

    Raises:
        ValueError: no such model, alias or version (naming the settings to change).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    wanted = version
    try:
        if not version:
            version = str(client.get_model_version_by_alias(name, alias).version)
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as err:
        what = f"version {version}" if wanted else f"alias '{alias}'"
        where = f"{section}.version or mlflow.alias" if section else "the version or alias"
        raise InputError(f"model {name!r} {what} not found in the registry at {uri} (train one with "
                         f"jobs/train.py, or set mlflow.model_name and {where})") from err
    return download_version(name, version)


def download_version(name: str, version: str) -> tuple[ModelFiles, Path]:
    """The files (and run id) of registered ``name`` version ``version`` (registry connected) and their folder."""
    from mlflow.tracking import MlflowClient

    from photoz_spark.registry import tracking

    model_uri = f"models:/{name}/{version}"
    directory = tracking.download_model(model_uri)
    run_id = MlflowClient().get_model_version(name, str(version)).run_id
    return ModelFiles.from_dir(directory, name, str(version), model_uri, run_id), directory


def latest_matching_version(name: str, params: dict) -> str | None:
    """The latest registered version of ``name`` if its run logged exactly these ``params``
    (values compared as strings), else None (also when there is no such model)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return None
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    logged = client.get_run(latest.run_id).data.params
    same = all(logged.get(key) == str(value) for key, value in params.items())
    return str(latest.version) if same else None
