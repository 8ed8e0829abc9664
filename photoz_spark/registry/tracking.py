"""MLflow tracking and model registry: where runs go, how a model is logged and promoted.

Training logs through the run helpers here (``start_run``, ``log_metrics``, ``epoch_logger``,
...), so no stage imports ``mlflow`` itself: this package is the only one that does.

Embedded default: a SQLite registry and a local artifact store under ``<workdir>/mlflow``.
``MLFLOW_TRACKING_URI`` (or ``mlflow.tracking_uri`` in config) points at a real server instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from photoz_spark.errors import MissingInput, RegistryUnavailable
from photoz_spark.registry import CHAMPION

SELECTION_METRIC = "val_crps"   # lower is better
PIP_REQUIREMENTS = ["torch", "numpy", "pandas", "pyarrow", "pyyaml"]


# mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI into the environment; remember what
# we set so a later job in the same process does not mistake it for the user's choice.
_SET_BY_US: set[str] = set()


def set_by_project(uri: str | None) -> bool:
    """True when ``uri`` is in MLFLOW_TRACKING_URI only because a job of this process connected to it
    (a child process should then not inherit it as the user's choice)."""
    return uri in _SET_BY_US


def tracking_uri(config: dict, workdir) -> str:
    """MLFLOW_TRACKING_URI if set, else config ``mlflow.tracking_uri``, else SQLite in the workdir."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = (env if env and not set_by_project(env) else None) or config["mlflow"]["tracking_uri"]
    if uri:
        return uri
    root = Path(workdir.mlflow).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def connect(uri: str, workdir, experiment: str) -> str:
    """Point MLflow at ``uri``, check it answers, and return the experiment id.

    Raises:
        ConnectionError: the tracking server does not answer (before any training starts).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if os.environ.get("MLFLOW_TRACKING_URI") != user_env:
        _SET_BY_US.add(uri)
    if uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        client = MlflowClient(uri, registry_uri=uri)
        found = client.get_experiment_by_name(experiment)
    except Exception as err:
        status = getattr(err, "get_http_status_code", lambda: None)()
        if status in (401, 403):  # it answers, but refuses us: not "does not answer"
            hint = ("start the server with --allowed-hosts naming the host in this URI (docs/deploy.md)"
                    if "Host header" in str(err) else
                    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
            raise RegistryUnavailable(f"MLflow tracking server {uri} refused the request (HTTP {status}"
                                      f"{': invalid Host header' if 'Host header' in str(err) else ''}); {hint}") from err
        raise RegistryUnavailable(f"MLflow tracking server {uri} does not answer ({type(err).__name__}); "
                              "start it, or unset MLFLOW_TRACKING_URI to use the embedded SQLite registry") from err
    if found is not None:
        return found.experiment_id
    artifacts = None
    if uri.startswith("sqlite:"):
        artifacts = (Path(workdir.mlflow).resolve() / "artifacts").as_uri()
    return client.create_experiment(experiment, artifact_location=artifacts)


def log_model(model_dir: Path, sample_input, sample_output) -> str:
    """Log the model files as an MLflow pyfunc (model from code) in the active run; returns its URI."""
    import mlflow
    from mlflow.models import infer_signature

    import photoz_spark

    with warnings.catch_warnings():
        # MLflow's two hints about the signature, not problems here: the output's n_observed is an
        # integer column on purpose, and the signature is given, so no input example is needed.
        # Only these: a warning about the pyfunc itself (e.g. its type hints) must still show.
        warnings.filterwarnings("ignore", message=r".*Inferred schema contains integer", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*An input example was not provided", category=UserWarning)
        info = _log_pyfunc(mlflow, photoz_spark, model_dir, infer_signature(sample_input, sample_output))
    return info.model_uri


def _log_pyfunc(mlflow, package, model_dir: Path, signature):
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(package.__file__).parent / "registry" / "mlflow_model.py"),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(package.__file__).parent)],
        signature=signature,
        pip_requirements=[*PIP_REQUIREMENTS, f"mlflow=={mlflow.__version__}"],
    )


def register_and_promote(model_uri: str, name: str, run_id: str, new_score: float, alias: str = CHAMPION) -> dict:
    """Register a new version; move the champion ``alias`` only if it beats the champion's score.

    Returns:
        version, promoted (bool), champion_version, previous_score and a sentence for the log.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - no alias yet
        champion = None
    previous = None
    if champion is not None:
        metrics = client.get_run(champion.run_id).data.metrics
        previous = metrics.get(SELECTION_METRIC)
    promoted = previous is None or new_score < previous
    if promoted:
        client.set_registered_model_alias(name, alias, version)
        message = (f"version {version} is now '{alias}' ({SELECTION_METRIC} {new_score:.4f}"
                   + (f" < {previous:.4f} of version {champion.version})" if previous is not None else ", first version)"))
    else:
        message = (f"version {version} registered but not promoted: {SELECTION_METRIC} {new_score:.4f} "
                   f">= {previous:.4f} of champion version {champion.version}")
    return {"version": int(version), "promoted": promoted, "message": message,
            "champion_version": int(version if promoted else champion.version), "previous_score": previous}


DOWNLOAD_PREFIX = "photoz-model-"  # + "<pid>-": the temp copies of registered models
_DOWNLOADS: list[str] = []  # this process's temp copies of models, removed when it exits


def remove_downloads() -> None:
    """Remove every temp folder ``download_model`` made in this process (also run at exit)."""
    while _DOWNLOADS:
        shutil.rmtree(_DOWNLOADS.pop(), ignore_errors=True)


atexit.register(remove_downloads)


def _remove_orphan_downloads() -> None:
    """Remove the temp model copies of processes that died without their exit handler (killed)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{DOWNLOAD_PREFIX}*-*"):
        pid = folder.name[len(DOWNLOAD_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: nobody uses this copy any more
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            continue


def download_model(uri: str) -> Path:
    """Fetch a registered model's files (``models:/name@champion``, ``models:/name/3``) to a temp folder.

    The folder (``photoz-model-<pid>-*`` in the system temp directory) lives until the process
    exits (``remove_downloads``); copies left by killed processes are removed by the next download.
    """
    import mlflow

    from photoz_spark.registry.artifact import META_FILE

    # No tqdm bar on stderr: a job's stderr is its one-line error (MLflow reads this per call).
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        _remove_orphan_downloads()
        folder = tempfile.mkdtemp(prefix=f"{DOWNLOAD_PREFIX}{os.getpid()}-")
        _DOWNLOADS.append(folder)
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
    found = sorted(Path(local, "artifacts").rglob(META_FILE))
    if not found:
        raise MissingInput(f"{uri} holds no {META_FILE}: not a photoz-spark model")
    return found[0].parent


def start_run(run_id: str | None, experiment_id: str):
    """``mlflow.start_run``: a new run (``run_id`` None) or the one of an interrupted training."""
    import mlflow

    return mlflow.start_run(run_id=run_id, experiment_id=experiment_id)


def log_params(params: dict) -> None:
    """Parameters of the active run."""
    import mlflow

    mlflow.log_params(params)


def log_metrics(metrics: dict) -> None:
    """Metrics of the active run."""
    import mlflow

    mlflow.log_metrics(metrics)


def log_artifact(path: str, artifact_path: str) -> None:
    """A file into the active run's artifacts."""
    import mlflow

    mlflow.log_artifact(path, artifact_path)


def set_tag(key: str, value: str) -> None:
    """A tag of the active run."""
    import mlflow

    mlflow.set_tag(key, value)


def epoch_logger(uri: str, run_id: str):
    """A function ``log(name, value, step)`` logging into run ``run_id`` (from a training rank)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)

    def log(name: str, value: float, step: int) -> None:
        client.log_metric(run_id, name, value, step=step)
    return log


def log_to_run(uri: str, run_id: str, folder: Path, artifact_path: str, metrics: dict) -> None:
    """Log a folder (under ``artifact_path``) and metrics into an existing run (evaluation's report)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.log_artifacts(run_id, str(folder), artifact_path)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
