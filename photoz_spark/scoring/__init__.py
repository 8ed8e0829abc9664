"""Score a catalog with a registered model: a pure Arrow kernel (kernel.py) and its Spark stage (run.py)."""

from photoz_spark.scoring.kernel import QUANTILES, output_schema, score_batch

__all__ = ["QUANTILES", "output_schema", "score_batch"]
