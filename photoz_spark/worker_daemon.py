"""Spark's Python daemon, with the workers' imports done once, before it forks them.

Spark starts one Python daemon per executor (``python -m <spark.python.daemon.module>``) and
forks a worker from it for each Python task slot. Spark's own daemon (``pyspark.daemon``)
imports almost nothing, so every worker imports ``pyspark.worker`` (compiled from source out
of ``pyspark.zip``: no cached bytecode, ~1 CPU s), numpy, pyarrow (which imports pandas the
first time an array is built) and the project's modules itself. Here the daemon imports them
once and the forked workers inherit them (copy-on-write): a fresh job's first Python stage
costs one set of imports instead of one per worker.

``spark.get_spark`` names this module only where the executors are known to import it (a local
master, the driver's own interpreter and path: ``spark.python_daemon``); elsewhere Spark's
daemon runs. A preload that fails is skipped: the worker imports it itself, as with Spark's
daemon.

One trade-off: Spark's daemon imports nothing that starts threads before it forks; numpy
(OpenBLAS), pyarrow (jemalloc's background thread) and pandas (numexpr) do. Those libraries
rebuild their pools in a forked child (fork handlers, pid checks), as for any ``multiprocessing``
fork after importing them, and no worker has hung in the tests or benches; ``spark.python_daemon:
spark`` goes back to Spark's daemon.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.machinery
import os
import sys

# What every worker of this project's Arrow stages imports. Not torch (scoring and training
# import it in their own functions: a crossmatch would pay for it for nothing).
PRELOAD = ("pyspark.worker", "numpy", "pyarrow", "pyarrow.parquet", "pyarrow.compute", "pandas",
           "photoz_spark.hats", "photoz_spark.crossmatch.run")


def preload(modules=PRELOAD) -> list[str]:
    """Import ``modules``; returns those that failed (the workers will try again themselves).

    Args:
        modules: module names, imported in order.

    Returns:
        The names whose import raised.
    """
    failed = []
    # The daemon's stdout is its channel to the JVM (the port it listens on): nothing an import
    # prints may land there.
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            for name in modules:
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001 - a missing extra must not stop the daemon: the worker retries
                    failed.append(name)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    return failed


def prefer_compiled_pyspark(path: list[str]) -> list[str]:
    """``path`` without Spark's ``pyspark.zip`` when it is the zip of the installed pyspark package.

    Spark puts ``$SPARK_HOME/python/lib/pyspark.zip`` first on the workers' path; Python caches
    no bytecode for a zip, so every import of pyspark compiles its source (~0.8 CPU s for the
    worker's modules). With pip's pyspark, ``$SPARK_HOME`` is the installed package and the zip
    holds the same files: its compiled copy is used instead. Any other zip is kept.

    Args:
        path: ``sys.path``.

    Returns:
        The path to use.
    """
    if "pyspark" in sys.modules:  # too late to choose
        return path
    spec = importlib.machinery.PathFinder.find_spec("pyspark", [p for p in path if not p.endswith(".zip")])
    if spec is None or not spec.origin:
        return path
    installed = os.path.dirname(os.path.abspath(spec.origin))
    same = os.path.join(installed, "python", "lib", "pyspark.zip")
    return [p for p in path if not (p.endswith("pyspark.zip") and os.path.abspath(p) == same)]


def main() -> None:
    """Preload, then run Spark's daemon loop (it forks the workers)."""
    sys.path[:] = prefer_compiled_pyspark(sys.path)
    preload()
    # Out of the collector's reach: each worker runs gc.collect() after every task, which would
    # otherwise walk (and, writing their headers, copy) every object inherited from here.
    gc.freeze()
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
