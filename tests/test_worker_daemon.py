"""The Python daemon that preloads the workers' imports (photoz_spark.worker_daemon) and when it is used."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from photoz_spark import PROJECT_DIR, worker_daemon
from photoz_spark.spark import WORKER_DAEMON, python_daemon_pairs


@pytest.mark.unit
def test_the_installed_pyspark_zip_gives_way_to_its_compiled_package():
    import pyspark

    installed = Path(pyspark.__file__).parent
    own_zip = str(installed / "python" / "lib" / "pyspark.zip")
    other_zip = "/opt/spark/python/lib/pyspark.zip"  # a Spark distribution's: may differ, kept
    path = [own_zip, other_zip, str(installed.parent)]
    code = (f"import sys; from photoz_spark.worker_daemon import prefer_compiled_pyspark as p; "
            f"print(p({path!r}))")  # a fresh interpreter: pyspark not imported yet
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_DIR)
    assert out.stdout.strip() == repr([other_zip, str(installed.parent)])
    # Once pyspark is imported the choice is made: the path is left alone.
    assert worker_daemon.prefer_compiled_pyspark(path) == path


@pytest.mark.unit
def test_preload_skips_what_fails_and_never_writes_to_stdout(capfd):
    failed = worker_daemon.preload(("json", "photoz_spark_no_such_module", "this.does.not.exist"))
    assert failed == ["photoz_spark_no_such_module", "this.does.not.exist"]
    assert capfd.readouterr().out == ""  # stdout is the daemon's channel to the JVM


@pytest.mark.unit
def test_the_daemon_is_named_only_on_a_local_master_that_can_import_it(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)
    assert python_daemon_pairs("local[2]", "auto") == {"spark.python.daemon.module": WORKER_DAEMON}
    assert python_daemon_pairs("local[2]", "spark") == {}
    assert python_daemon_pairs("spark://10.0.0.1:7077", "auto") == {}, "a cluster keeps Spark's daemon"
    # Workers whose interpreter cannot import it (an exit status of 1 from the probe), or that
    # does not start at all: Spark's daemon, never a crash.
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    monkeypatch.setenv("PYSPARK_PYTHON", str(python))
    assert python_daemon_pairs("local[2]", "auto") == {}
    monkeypatch.setenv("PYSPARK_PYTHON", str(tmp_path / "no-such-python"))
    assert python_daemon_pairs("local[2]", "auto") == {}


def test_the_session_workers_fork_from_the_preloading_daemon(spark):
    def worker_state(batches):  # nested: pickled by value, the workers need not import this file
        import gc

        import pyspark

        for batch in batches:
            yield pa.RecordBatch.from_pydict({
                "preloaded": ["photoz_spark.crossmatch.run" in sys.modules] * batch.num_rows,
                "pyspark_zip": [".zip" in pyspark.__file__] * batch.num_rows,
                "frozen": [gc.get_freeze_count()] * batch.num_rows,
                "pid": [os.getpid()] * batch.num_rows})

    assert spark.sparkContext.getConf().get("spark.python.daemon.module") == WORKER_DAEMON
    rows = spark.range(4, numPartitions=2).mapInArrow(
        worker_state, "preloaded boolean, pyspark_zip boolean, frozen long, pid long").collect()
    assert all(r.preloaded for r in rows), "the crossmatch's modules came with the fork"
    assert not any(r.pyspark_zip for r in rows), "pyspark from its compiled package, not the zip"
    assert all(r.frozen > 10_000 for r in rows), "the inherited objects are out of the collector's reach"
