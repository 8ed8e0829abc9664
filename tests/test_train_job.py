"""jobs/train.py: TorchDistributor training, MLflow logging, registry promotion, resume, bad input."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from photoz_spark import PROJECT_DIR, hats
from photoz_spark.bands import load_bands
from photoz_spark.jobs import build_features
from photoz_spark.jobs import train as train_job
from photoz_spark.toy import toy_matched_table

REG = load_bands()
SMALL_MODEL = ["model.hidden1=16", "model.hidden2=8", "model.dense=16", "model.n_components=3",
               "train.batch_size=64", "train.max_epochs=3", "train.band_set=sdss_wise9"]


def matched_from_redshift(n: int, seed: int) -> pa.Table:
    return toy_matched_table(n, seed)


@pytest.fixture(scope="module")
def workdir(spark, tmp_path_factory):
    wd = tmp_path_factory.mktemp("train")
    hats.write_hats_table(matched_from_redshift(3000, 0), wd / "matched" / "dr16q", order=5, ra_col="RA",
                          dec_col="DEC", catalog_name="dr16q")
    build_features.main(["--workdir", str(wd), "--band-set", "sdss_wise9"])
    return wd


@pytest.fixture(scope="module")
def first(workdir):
    return train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "train.lr=0.01"])


def test_trains_logs_and_registers_champion(first, workdir):
    assert first["epochs"] == 3 and first["distributed"]["local_mode"] and not first["distributed"]["use_gpu"]
    assert first["promotion"]["version"] == 1 and first["promotion"]["promoted"]
    m = first["metrics"]
    assert m["val_sigma_nmad"] < 0.5 and 0 < m["val_crps"] < 1.0
    assert set(m) >= {f"{p}_{k}" for p in ("val", "test") for k in ("sigma_nmad", "f_out", "bias", "mse", "mae", "crps")}
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(first["tracking_uri"])
    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.data.params["train.band_set"] == "sdss_wise9"
    assert len(client.get_metric_history(first["run_id"], "val_nll")) == 3
    assert int(client.get_model_version_by_alias("photoz-lstm-mdn", "champion").version) == 1
    assert not (workdir / "train" / "photoz-lstm-mdn").exists(), "checkpoints are removed after registration"


def test_registered_model_predicts_from_raw_columns(first, workdir):
    import mlflow

    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model

    mlflow.set_tracking_uri(first["tracking_uri"])
    raw = matched_from_redshift(200, 7)
    model = PhotozModel(download_model("models:/photoz-lstm-mdn@champion"))
    assert model.meta["layout"]["band_set"] == "sdss_wise9" and len(model.meta["stats"]["mean"]) == 9
    pred = model.predict_table(raw)
    assert len(pred) == 200 and np.isfinite(pred.z_phot_mean).all() and (pred.z_phot_std > 0).all()
    assert ((pred.z_conf >= 0) & (pred.z_conf <= 1)).all() and pred.z_conf.std() > 0
    pyfunc = mlflow.pyfunc.load_model("models:/photoz-lstm-mdn@champion")
    columns = [c for b in REG.band_set("sdss_wise9").bands for c in (b.flux, b.err)]
    same = pyfunc.predict(raw.select(columns).to_pandas())
    np.testing.assert_allclose(same["z_phot_mean"], pred.z_phot_mean, rtol=1e-5)


OUTSIDE_SCRIPT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/photoz-lstm-mdn@champion")
out = model.predict(pd.read_parquet("input.parquet"))
import photoz_spark
from photoz_spark import PROJECT_DIR
loaded = model.unwrap_python_model().model
json.dump({"package": photoz_spark.__file__, "conf": (PROJECT_DIR / "conf").exists(),
           "band_set": loaded.band_set.name, "z_phot_mean": out["z_phot_mean"].tolist()}, open("out.json", "w"))
"""


def test_champion_predicts_the_same_outside_the_checkout(first, tmp_path):
    """From a folder with no conf/, without the checkout on the path, the champion loads its own
    code copy and band definitions and predicts the numbers it predicts here."""
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model

    raw = matched_from_redshift(100, 11)
    band_set = REG.band_set("sdss_wise9")
    raw.select([c for b in band_set.bands for c in (b.flux, b.err)]).to_pandas().to_parquet(tmp_path / "input.parquet")
    (tmp_path / "predict.py").write_text(OUTSIDE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = first["tracking_uri"]
    subprocess.run([sys.executable, "predict.py"], cwd=tmp_path, env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = json.loads((tmp_path / "out.json").read_text())
    assert PROJECT_DIR not in Path(out["package"]).parents and not out["conf"], out["package"]
    assert out["band_set"] == "sdss_wise9"
    here = PhotozModel(download_model("models:/photoz-lstm-mdn@champion")).predict_table(raw)
    np.testing.assert_array_equal(np.asarray(out["z_phot_mean"], np.float32), here.z_phot_mean.to_numpy())


def test_a_model_without_band_definitions_still_loads(first):
    """Models saved before the band definitions travelled with them fall back to conf/bands.yaml."""
    from photoz_spark.registry.artifact import META_FILE, PhotozModel
    from photoz_spark.registry.tracking import download_model

    directory = download_model("models:/photoz-lstm-mdn@champion")
    meta = json.loads((directory / META_FILE).read_text())
    assert meta["bands"]["band_set"] == "sdss_wise9" and len(meta["bands"]["bands"]) == 9
    (directory / META_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "bands"}))
    old = PhotozModel(directory)
    assert old.band_set.name == "sdss_wise9" and old.band_set.names == REG.band_set("sdss_wise9").names


def test_worse_model_is_registered_but_not_promoted(first, workdir):
    # barely trained from PyTorch's initialisation (the paper recipe): a model far from calibrated;
    # the fast recipe's quantile head would start it at the redshift distribution instead
    worse = train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "train.recipe=paper", "train.max_epochs=1",
                            "train.lr=1e-6", "train.recalibrate=true"])
    assert worse["promotion"]["version"] == 2 and not worse["promotion"]["promoted"]
    assert "not promoted" in worse["promotion"]["message"]
    assert worse["promotion"]["champion_version"] == 1
    # Recalibration (a calibrated mixture, the default), fitted on the validation split, flattens
    # the barely trained model's test PIT and lowers its CRPS.
    m = worse["metrics"]
    assert m["test_pit_ks_calibrated"] < 0.7 * m["test_pit_ks"] and m["test_crps_calibrated"] < m["test_crps"]
    assert "val_pit_ks" in first["metrics"] and "test_pit_ks_calibrated" not in first["metrics"]

    import mlflow

    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model

    mlflow.set_tracking_uri(worse["tracking_uri"])
    calibrated = PhotozModel(download_model("models:/photoz-lstm-mdn/2"))
    from photoz_spark.model.calibration import MixtureCalibration
    assert isinstance(calibrated.calibration, MixtureCalibration) and len(calibrated.calibration.nodes) == 8
    assert PhotozModel(download_model("models:/photoz-lstm-mdn/1")).calibration is None


def test_killed_run_resumes_from_checkpoint(first, workdir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the paper recipe's step schedule lets the resumed run end sooner (a cosine's rate depends on max_epochs)
    args = [sys.executable, str(PROJECT_DIR / "jobs" / "train.py"), "--workdir", str(workdir), *SMALL_MODEL,
            "train.recipe=paper", "train.max_epochs=40", "train.patience=100", "mlflow.model_name=resumable"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    history = workdir / "train" / "resumable" / "history.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not history.is_file() or len(history.read_text().splitlines()) < 2):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its ranks, mid-training
    proc.wait()
    done = len(history.read_text().splitlines())
    assert 2 <= done < 40
    resumed = train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "train.recipe=paper", "train.max_epochs=6",
                              "train.patience=100", "mlflow.model_name=resumable"])
    assert resumed["resumed"] and resumed["epochs"] == 6 and resumed["promotion"]["version"] == 1


def test_failed_rank_fails_the_job(spark, tmp_path):
    from photoz_spark.train.run import run_distributed

    cfg = {"num_processes": 2, "use_gpu": False, "resume": False, "max_epochs": 1, "batch_size": 8, "seed": 0}
    with pytest.raises(RuntimeError, match="did not finish"):
        run_distributed(spark, tmp_path / "no-features", tmp_path, cfg, {"n_steps": 2})


@pytest.mark.parametrize("args, message", [
    (["--band-set", "optical8"], "no features at"),
    (["train.batch_size=5000"], "too few for 2 ranks at batch 5000"),
    (["train.backend=tfrecord"], "train.backend must be arrow or petastorm"),
    (["--band-set", "nope"], "unknown band set 'nope'"),
])
def test_bad_input_refused_before_training(workdir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(["--workdir", str(workdir), *SMALL_MODEL, *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_layout_mismatch_refused(workdir, capsys):
    shutil.copytree(workdir / "features" / "sdss_wise9", workdir / "features" / "optical8", dirs_exist_ok=True)
    try:
        with pytest.raises(SystemExit):
            train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "--band-set", "optical8"])
        assert "built for band set 'sdss_wise9', not 'optical8'" in capsys.readouterr().err
    finally:
        shutil.rmtree(workdir / "features" / "optical8")


def test_unreachable_tracking_server_refused(workdir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(SystemExit):
        train_job.main(["--workdir", str(workdir), *SMALL_MODEL])
    assert "does not answer" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("mlflow server did not start")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # gunicorn's workers can outlast SIGTERM on a loaded machine
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_server_refusing_our_host_header_is_named_with_the_fix(mlflow_server, tmp_path, monkeypatch):
    """Issue 18's reproducer: MLflow 3.x answers HTTP 403 to a Host header it does not allow (a
    server started without --allowed-hosts, reached by its host name); the job says so and how to
    fix it instead of "does not answer"."""
    from photoz_spark.errors import RegistryUnavailable
    from photoz_spark.registry import tracking

    host = socket.gethostname()
    if not socket.gethostbyname(host).startswith("127."):
        pytest.skip(f"the host name {host} does not resolve to loopback, where the test server listens")
    uri = f"http://{host}:{mlflow_server.rsplit(':', 1)[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as a user would; restored after the test
    with pytest.raises(RegistryUnavailable) as info:
        tracking.connect(uri, tmp_path, "x")
    assert "refused the request (HTTP 403: invalid Host header); start the server with --allowed-hosts" in str(info.value)


def test_registry_on_a_real_mlflow_server(workdir, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "train.max_epochs=1",
                          "mlflow.model_name=served"])
    assert out["tracking_uri"] == mlflow_server and out["promotion"]["promoted"]
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/registered-models/alias"
                                f"?name=served&alias=champion", timeout=10) as response:
        assert json.load(response)["model_version"]["version"] == "1"


def test_recipe_presets_overrides_and_global_batch():
    from photoz_spark.config import ConfigError, load_config
    from photoz_spark.train.run import rank_batch, settings_from

    paper = settings_from(load_config("train.yaml", overrides=["train.recipe=paper"])["train"])
    assert (paper.optimizer, paper.batch_size, paper.lr, paper.schedule, paper.lr_step_epochs, paper.lr_gamma,
            paper.patience, paper.max_epochs, paper.grad_clip) == ("adam", 128, 1e-3, "step", 50, 0.1, 20, 200, 0.0)
    assert paper.head_init == "torch"
    fast = settings_from(load_config("train.yaml", overrides=["train.recipe=fast", "train.lr=1e-6",
                                                              "train.batch_size=64"])["train"])
    assert (fast.optimizer, fast.schedule, fast.lr, fast.batch_size, fast.head_init) == (
        "adam", "cosine", 1e-6, 64, "quantiles")
    large = settings_from(load_config("train.yaml", overrides=["train.recipe=large_batch"])["train"])
    assert (large.optimizer, large.batch_size, large.lr_scaling, large.peak_lr) == ("adamw", 512, "linear", 4e-3)
    # the global batch over ranks: 2 ranks x 32 rows take the step one process takes on 64
    assert rank_batch(64, 2) == 32 and rank_batch(64, 1) == 64
    with pytest.raises(ConfigError, match="global batch and must divide evenly over train.num_processes=2"):
        rank_batch(65, 2)
    with pytest.raises(ConfigError, match="train.recipe must be one of paper, fast, large_batch"):
        settings_from(load_config("train.yaml", overrides=["train.recipe=quick"])["train"])
