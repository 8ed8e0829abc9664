"""The LSTM-MDNz model and its mixture maths (torch only: runs on a GPU host without Spark)."""

from photoz_spark.model.network import BiLSTMMDN, ModelConfig, mixture

__all__ = ["BiLSTMMDN", "ModelConfig", "mixture"]
