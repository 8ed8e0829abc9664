"""One way to get a SparkSession, built from the ``spark:`` section of the configuration."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession


def _conf_pairs(spark_config: dict) -> dict[str, str]:
    """Translate the project's ``spark:`` settings into Spark configuration keys.

    Args:
        spark_config: the ``spark`` section of the configuration.

    Returns:
        Spark configuration key -> value, all strings.
    """
    conf = {
        "spark.driver.memory": spark_config["driver_memory"],
        "spark.sql.shuffle.partitions": spark_config["shuffle_partitions"],
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": spark_config["arrow_batch_size"],
        "spark.ui.showConsoleProgress": "true",
        # Timestamps mean the same thing on every machine and in every test.
        "spark.sql.session.timeZone": "UTC",
    }
    if str(spark_config["master"]).startswith("local"):
        # A laptop on VPN or with an odd hostname must not make the driver unreachable to itself.
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return {key: _conf_value(value) for key, value in conf.items()}


def _conf_value(value) -> str:
    # Spark wants "true"/"false"; Python's str(True) is "True".
    return str(value).lower() if isinstance(value, bool) else str(value)


def get_spark(config: dict, extra_conf: dict | None = None) -> SparkSession:
    """Return the active SparkSession, or build one from ``config["spark"]``.

    Args:
        config: the job configuration; its ``spark`` section has master, app_name,
            driver_memory, shuffle_partitions, arrow_batch_size and log_level.
        extra_conf: further Spark configuration keys (e.g. ``spark.ui.enabled``), applied last.

    Returns:
        The SparkSession. An already active session is reused as is, so jobs called from
        tests (or from a notebook) share the caller's session instead of starting a second JVM.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Without these, executors start the system Python, which lacks the project's packages.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    spark_config = config["spark"]
    builder = SparkSession.builder.master(spark_config["master"]).appName(spark_config["app_name"])
    for key, value in {**_conf_pairs(spark_config), **(extra_conf or {})}.items():
        builder = builder.config(key, _conf_value(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_config["log_level"])
    return spark
