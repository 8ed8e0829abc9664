"""Score outputs in the formats other astronomy tools read (qp ensembles for RAIL; see qp.py)."""

from photoz_spark.export.qp import ScoreCatalog, ensemble_from_table, export_qp, to_qp

__all__ = ["ScoreCatalog", "ensemble_from_table", "export_qp", "to_qp"]
