"""bench/gpu_check.py --job-path on CPU, in a child that cannot import pyspark or mlflow (a GPU host
with PyTorch only): the job path runs and prints its table of positive numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.unit

CHILD = textwrap.dedent("""
    import runpy, sys
    sys.modules["pyspark"] = None  # any import of them now raises ImportError
    sys.modules["mlflow"] = None
    sys.argv = ["bench/gpu_check.py", "--job-path", "--device", "cpu", "--rows", "2000", "--train-rows", "300",
                "--epochs", "2", "--fast-batch", "192", "--batch-size", "700", "--workdir", sys.argv[1]]
    try:
        runpy.run_path("bench/gpu_check.py", run_name="__main__")
    except SystemExit as done:
        print("EXIT", done.code)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "mlflow", "py4j")
                    and sys.modules[m] is not None)
    print("LOADED", loaded)
""")


def number(table: str, label: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s+([\d,.]+)", table, re.MULTILINE)
    assert match, f"{label!r} not in\n{table}"
    return float(match.group(1).replace(",", ""))


def test_job_path_runs_on_cpu_without_spark_or_mlflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "work")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    out = done.stdout
    assert "EXIT 0" in out and "LOADED []" in out, out[-3000:] + done.stderr[-3000:]
    assert "JOB PATH OK" in out
    for label in ("train b128 samples/s", "train b192 samples/s", "score first task rows/s", "score warm task rows/s"):
        assert number(out, label) > 0
    assert re.search(r"^train b128 s to val NLL [\d.]+\s+[\d.]+\s+checkpoint ok", out, re.MULTILINE), out
    assert re.search(r"^score precision chosen\s+fp32\s+cpu", out, re.MULTILINE), out
    scored = list((tmp_path / "work" / "scores").rglob("*.parquet"))
    assert scored and sum(pq_rows(f) for f in scored) == 2000


def pq_rows(path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


DEVICE_PATHS = textwrap.dedent("""
    import runpy, sys
    sys.modules["pyspark"] = None
    sys.modules["mlflow"] = None
    sys.argv = ["bench/device_paths.py", "--device", "cpu", "--rows", "300", "--train-rows", "1024", "--quick",
                "--repeats", "1", "--batch-size", "128"]
    try:
        runpy.run_path("bench/device_paths.py", run_name="__main__")
    except SystemExit as done:
        print("EXIT", done.code)
""")


def test_device_paths_bench_runs_on_cpu_without_spark_or_mlflow():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", DEVICE_PATHS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    out = done.stdout
    assert "EXIT 0" in out, out[-3000:] + done.stderr[-3000:]
    for label, unit in (("score task, overlap off", "rows/s"), ("score task, overlap on", "rows/s"),
                        ("train feed host (b512, fp32)", "samples/s"), ("train feed pinned (b512, fp32)", "samples/s"),
                        ("train autocast auto -> none", "samples/s")):
        assert re.search(rf"^\s+{re.escape(label)}\s+[\d,]+ {unit}", out, re.MULTILINE), out
    assert re.search(r"mixture columns written as fixed_size_list\s+[\d.]+ CPU s", out), out
    assert re.search(r"checkpoint: epoch waits \(background\)\s+[\d.]+ ms", out), out
