"""Positional crossmatch of a left catalog with right catalogs on Spark (``jobs/crossmatch.py``).

``geometry``: the math (pure numpy); ``algorithm``: the matching algorithms behind one interface;
``catalogs``: input checks; ``run``: the Spark stage that writes ``matched/<run>``.
"""

from photoz_spark.crossmatch.algorithm import CrossmatchAlgorithm, KdTreeMatch, Matches
from photoz_spark.crossmatch.catalogs import CatalogError
from photoz_spark.crossmatch.run import CrossmatchPlan, crossmatch, make_plan, validate

__all__ = ["CatalogError", "CrossmatchAlgorithm", "CrossmatchPlan", "KdTreeMatch", "Matches", "crossmatch",
           "make_plan", "validate"]
