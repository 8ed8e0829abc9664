"""Score a catalog with a registered model: a pure Arrow kernel (kernel.py) and its Spark stage (run.py)."""

from photoz_spark.model.summaries import QUANTILES
from photoz_spark.scoring.kernel import output_schema, score_batch

__all__ = ["QUANTILES", "output_schema", "score_batch"]
