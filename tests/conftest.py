"""Shared fixtures: one local SparkSession for the whole run (starting a JVM takes seconds)."""

from __future__ import annotations

import pytest

from photoz_spark.cli import Workdir
from photoz_spark.config import load_config
from photoz_spark.spark import get_spark

LAYER_MARKS = {"unit", "spark", "cluster", "slow"}


def pytest_collection_modifyitems(items):
    """A test without a layer mark is ``spark``: it uses the spark fixture or runs a job, which
    starts a session of its own. Modules without the JVM say ``pytestmark = pytest.mark.unit``."""
    for item in items:
        if not {m.name for m in item.iter_markers()} & LAYER_MARKS or "spark" in item.fixturenames:
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark():
    """A small local SparkSession built the way jobs build theirs, stopped after the last test."""
    config = load_config(overrides=[
        "spark.master=local[2]", "spark.shuffle_partitions=4", "spark.driver_memory=2g",
        "spark.app_name=photoz-spark-tests",
    ])
    session = get_spark(config, extra_conf={"spark.ui.enabled": False})
    yield session
    session.stop()


@pytest.fixture
def tmp_workdir(tmp_path) -> Workdir:
    """A fresh work directory with the standard sub-folders available as attributes."""
    return Workdir(tmp_path / "workdir")
