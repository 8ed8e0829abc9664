"""Ingest real survey catalogs (FITS, CSV, Parquet, HATS) into the pipeline's HATS layout.

``survey_map`` loads a product's column map (``conf/surveys/*.yaml``), ``readers`` streams a
file's rows in bounded chunks, ``transform`` turns a chunk into the pipeline's native columns,
and ``run`` validates everything up front, stages the chunks and writes the catalog with Spark.
"""

from photoz_spark.errors import UserError


class IngestError(UserError, ValueError):
    """Input the ingest cannot use: a missing column, a unit mismatch, an unreadable file."""
