"""The registered model, in one package: the only library package that imports ``mlflow``.

- ``artifact``: the model's files (weights.pt + model.json with its band definitions),
  ``PhotozModel`` (load and predict), ``save_model_files``, ``cpu_chunk_rows``.
- ``mlflow_model``: the MLflow pyfunc entry (model from code).
- ``tracking``: tracking URI, experiment, run logging, ``log_model``, registration and the
  champion rule (``register_and_promote``), ``download_model``.
- ``resolve``: name + alias | version -> files + run id (``resolve_model``, ``download_version``).

Importing this package imports neither mlflow nor torch; its modules do what they need.
"""

CHAMPION = "champion"
