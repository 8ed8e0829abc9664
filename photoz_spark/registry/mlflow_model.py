"""MLflow "model from code" entry point: no pickled Python object is stored or loaded.

``tracking.log_model`` logs this file with the package as code, so ``mlflow.pyfunc.load_model``
runs it from the model's own copy of photoz_spark; the band definitions come from model.json.
"""

import warnings
from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import pandas as pd
import pyarrow as pa

from photoz_spark.registry.artifact import PhotozModel

with warnings.catch_warnings():  # mlflow.pyfunc asks for type hints on its own and our classes
    warnings.simplefilter("ignore", UserWarning)

    class PhotozPyfunc(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper: input = a DataFrame of the band set's native columns."""

        def load_context(self, context):
            self.model = PhotozModel(Path(context.artifacts["model_dir"]))

        def predict(self, context, model_input, params=None):
            table = pa.Table.from_pandas(pd.DataFrame(model_input), preserve_index=False)
            return self.model.predict_table(table)


mlflow.models.set_model(PhotozPyfunc())
