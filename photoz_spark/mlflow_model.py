"""MLflow "model from code" entry point: no pickled Python object is stored or loaded."""

import mlflow.models

from photoz_spark.serving import PhotozPyfunc

mlflow.models.set_model(PhotozPyfunc())
