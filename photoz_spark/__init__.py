"""photoz-spark: survey-scale photometric redshifts (LSTM-MDNz) on Apache Spark."""

import os
from pathlib import Path

# MLflow would otherwise send usage telemetry; nothing here may reach the network uninvited.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# With tqdm installed (the astro extra brings it) MLflow draws a progress bar for every model
# download into the jobs' output and their one-line errors.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
CONF_DIR = PROJECT_DIR / "conf"
