"""bench/scale.py's measuring parts: the driver's memory and CPU read from /proc, the event log, the slopes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_monitor_reads_the_drivers_peak_rss_and_cpu(scale):
    """A child that holds 300 MB and spins ~0.5 s of CPU: the peak and the CPU come from /proc."""
    import subprocess

    code = ("import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            "t = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(0.3)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    monitor = scale.Monitor(proc.pid, [], interval=0.05)
    proc.wait()
    got = monitor.stop()
    assert 300 <= got["driver_python_peak_mib"] < 400
    assert 0.4 <= got["cpu_s"]["driver_python"] < 2.0
    assert got["driver_jvm_peak_mib"] == 0  # no JVM under this driver


def test_event_log_sums_task_time_result_bytes_and_driver_heap(scale, tmp_path):
    events = [
        {"Event": "SparkListenerTaskEnd", "Task Metrics": {"Executor Run Time": 1500, "Result Size": 2048}},
        {"Event": "SparkListenerTaskEnd", "Task Metrics": {"Executor Run Time": 500, "Result Size": 1024}},
        {"Event": "SparkListenerStageExecutorMetrics", "Executor ID": "driver",
         "Executor Metrics": {"JVMHeapMemory": 300 * 2**20}},
        {"Event": "SparkListenerStageExecutorMetrics", "Executor ID": "0",
         "Executor Metrics": {"JVMHeapMemory": 900 * 2**20}},  # an executor's heap: not the driver's
        {"Event": "SparkListenerStageExecutorMetrics", "Executor ID": "driver",
         "Executor Metrics": {"JVMHeapMemory": 200 * 2**20}},
    ]
    (tmp_path / "app-1").write_text("".join(json.dumps(e) + "\n" for e in events))
    got = scale.read_event_log(tmp_path)
    assert got == {"task_s": 2.0, "tasks": 2, "result_bytes": 3072, "driver_heap_peak_mib": 300.0}
    args = scale.event_log_args(tmp_path)
    assert "spark.eventLog.enabled=true" in args and args.endswith("pyspark-shell")


def test_slopes_and_sky_size(scale):
    assert scale.slope([0.1, 1.0, 10.0], [500.0, 500.0, 500.0]) == 0.0  # flat driver
    assert scale.slope([0.1, 1.0, 10.0], [1.0, 10.0, 100.0]) == pytest.approx(10.0)
    assert scale.slope([1.0], [3.0]) == 0.0
    # the simulator's pixels: the default order 6 for big skies, finer so a small sky has several pixels
    assert scale.sim_order_for(10_000_000, 53_000) == 6
    assert scale.sim_order_for(100_000, 53_000) == 7
    assert scale.sim_order_for(1_000, 53_000) == 10
    assert scale.radius_for(10_000_000, 53_000) == pytest.approx((10_000_000 / 53_000 / 3.14159265) ** 0.5)


def test_report_prints_every_stage_and_the_slopes(scale):
    def stage(rows, py, task_s):
        return {"rows": rows, "wall_s": 10.0, "cpu_s": {"driver_python": 2.0, "driver_jvm": 5.0, "tasks": task_s},
                "task_s": task_s, "driver_python_peak_mib": py, "driver_jvm_peak_mib": 600.0,
                "driver_heap_peak_mib": 200.0, "result_bytes": 4096, "tasks": 8}

    results = {"1000000": {"score": stage(1_000_000, 300.0, 10.0), "_data": {}},
               "100000": {"score": stage(100_000, 300.0, 1.0), "_data": {}}}
    text = scale.report(results)
    lines = text.splitlines()
    assert lines[1].split()[:2] == ["score", "100,000"] and lines[2].split()[:2] == ["score", "1,000,000"]
    assert "Python   +0.00, JVM   +0.00, JVM heap   +0.00 MiB/10^6 rows" in text  # a flat driver
    assert "task time 0.0 s + 10.00 µs/row (CPU 10.00 µs/row); marginal µs/row: 10.00" in text  # linear
