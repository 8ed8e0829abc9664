"""MLflow "model from code" entry point: no pickled Python object is stored or loaded.

``tracking.log_model`` logs this file with the package as code, so ``mlflow.pyfunc.load_model``
runs it from the model's own copy of photoz_spark; the band definitions come from model.json.

``predict`` is typed (a DataFrame in, a DataFrame out): MLflow inspects the hints when the model
is logged and loaded, and without them it printed "Add type hints to the `predict` method" in
every job that logs or loads a model. A DataFrame hint carries no schema of its own, so the input
is still checked against the signature logged with the model (the band set's native columns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd
import pyarrow as pa

from photoz_spark.registry.artifact import PhotozModel


class PhotozPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: input = a DataFrame of the band set's native columns."""

    def load_context(self, context) -> None:
        self.model = PhotozModel(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Point estimates for each row.

        Args:
            context: MLflow's context (unused once loaded).
            model_input: the band set's native flux and error columns, one row per object.
            params: unused (MLflow's inference parameters).

        Returns:
            ``z_phot_mean``, ``z_phot_std``, ``z_phot_median`` and ``n_observed`` per row.
        """
        table = pa.Table.from_pandas(pd.DataFrame(model_input), preserve_index=False)
        return self.model.predict_table(table)


mlflow.models.set_model(PhotozPyfunc())
