"""Logging and loading the registered model prints no MLflow warning a user cannot act on (#19 item 4).

MLflow checks the pyfunc's ``predict`` type hints when a model is logged and again when it is
loaded; an untyped ``predict`` printed "Add type hints to the `predict` method" (in colour) in the
middle of every training and scoring job. The check runs in a fresh interpreter with every
UserWarning shown (``-W always``): MLflow caches the check per function, so an earlier test in
the same process could hide the warning.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from photoz_spark import PROJECT_DIR

SCRIPT = r'''
import sys, tempfile
from pathlib import Path

import pyarrow as pa

from photoz_spark.bands import load_bands
from photoz_spark.features.sequencing import sequence
from photoz_spark.features.stats import compute_stats
from photoz_spark.model import BiLSTMMDN, ModelConfig
from photoz_spark.registry import artifact, tracking
from photoz_spark.toy import toy_matched_table

tmp = Path(tempfile.mkdtemp())
registry = load_bands()
band_set = registry.band_set("sdss_wise9")
raw, observed, _ = sequence(toy_matched_table(50, 3), band_set, registry)
config = ModelConfig(n_steps=len(band_set), hidden1=8, hidden2=4, dense=8, n_components=3)
layout = {"band_set": band_set.name, "bands": band_set.names, "n_steps": len(band_set), "n_channels": 2}
artifact.save_model_files(tmp / "model", BiLSTMMDN(config).state_dict(),
                          {"model_config": config.to_dict(), "layout": layout,
                           "stats": compute_stats(raw, observed, band_set)}, registry)
sample = toy_matched_table(5, 1).select([c for b in band_set.bands for c in (b.flux, b.err)]).to_pandas()
expected = artifact.PhotozModel(tmp / "model", registry).predict_table(pa.Table.from_pandas(sample))

import mlflow

mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")  # artifacts: ./mlruns of the test's folder
print("@@ log", file=sys.stderr, flush=True)
with mlflow.start_run():
    uri = tracking.log_model(tmp / "model", sample, expected)
print("@@ load", file=sys.stderr, flush=True)
got = mlflow.pyfunc.load_model(uri).predict(sample)
print("@@ predicted", len(got), list(got.columns), float(abs(got["z_phot_mean"] - expected["z_phot_mean"]).max()),
      flush=True)

# The control: an untyped predict still warns through the same path, so the capture works.
from mlflow.pyfunc.utils.data_validation import _get_func_info_if_type_hint_supported

def predict(self, context, model_input, params=None):
    return model_input

print("@@ control", file=sys.stderr, flush=True)
_get_func_info_if_type_hint_supported(predict)
'''


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    done = subprocess.run([sys.executable, "-W", "always::UserWarning", "-c", SCRIPT], check=False,
                          capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path_factory.mktemp("registry"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def test_pyfunc_predict_is_typed():
    from photoz_spark.registry.mlflow_model import PhotozPyfunc

    hints = PhotozPyfunc.predict.__annotations__
    assert hints["model_input"] == "pd.DataFrame" and hints["return"] == "pd.DataFrame"


def test_logging_and_loading_print_no_type_hint_warning(run_output):
    stdout, stderr = run_output
    before_control = stderr.split("@@ control")[0]
    assert "@@ log" in before_control and "@@ load" in before_control
    assert "type hints" not in before_control, before_control
    assert "UserWarning" not in before_control, before_control  # nothing else MLflow says either
    # The loaded pyfunc predicts what the model files do, for every row.
    line = next(x for x in stdout.splitlines() if x.startswith("@@ predicted"))
    assert line.startswith("@@ predicted 5 ['z_phot_mean', 'z_phot_std', 'z_phot_median', 'z_conf', 'n_observed']")
    assert float(line.split()[-1]) < 1e-5


def test_the_capture_sees_the_warning_when_predict_is_untyped(run_output):
    _, stderr = run_output
    assert "Add type hints to the `predict` method" in stderr.split("@@ control")[1]
