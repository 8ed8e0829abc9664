"""Feature sequencing: native photometry -> the LSTM's input sequence, splits and statistics.

Pure numpy/Arrow functions; ``photoz_spark.features.run`` orchestrates them on Spark.
"""

from photoz_spark.features.build import FeatureSpec, batch_summary, feature_batch, layout, output_schema
from photoz_spark.features.selection import select
from photoz_spark.features.sequencing import CHANNELS, UNIT, band_columns, sequence
from photoz_spark.features.split import EXCLUDED, SPLITS, assign_split, hash_ids
from photoz_spark.features.stats import (
    combine_moments,
    compute_stats,
    moments,
    standardise,
    stats_from_moments,
)

__all__ = [
    "CHANNELS", "EXCLUDED", "SPLITS", "UNIT", "FeatureSpec", "assign_split", "band_columns", "batch_summary",
    "combine_moments", "compute_stats", "feature_batch", "hash_ids", "layout", "moments", "output_schema",
    "select", "sequence", "standardise", "stats_from_moments",
]
