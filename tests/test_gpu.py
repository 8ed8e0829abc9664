"""The GPU start-up path without a GPU: the decision logic, driver GPU resources from a fake
discovery script, and TorchDistributor built exactly as training builds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from photoz_spark.config import ConfigError
from photoz_spark.spark import discover_gpus, local_gpu_pairs, wants_driver_gpus
from photoz_spark.train.run import GpuPlan, gpu_plan

REPO = Path(__file__).resolve().parents[1]


def fake_script(tmp_path: Path, text: str, name: str = "fake_gpus.sh") -> Path:
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + text + "\n")
    script.chmod(0o755)
    return script


def one_gpu(tmp_path: Path) -> Path:
    return fake_script(tmp_path, """echo '{"name": "gpu", "addresses": ["0"]}'""")


@pytest.mark.unit
@pytest.mark.parametrize("setting, local, ranks, cuda, driver, executor, expected", [
    (False, True, 2, 4, 4, 0, GpuPlan(False, 2)),
    ("auto", True, 2, 0, 0, 0, GpuPlan(False, 2)),                  # CPU host
    ("auto", True, 1, 1, 1, 0, GpuPlan(True, 1)),                   # one GPU, one rank
    ("auto", True, 4, 2, 2, 0, GpuPlan(True, 2, "train.num_processes=4 reduced to 2: one rank per GPU")),
    (True, True, 2, 2, 2, 0, GpuPlan(True, 2)),
    ("auto", False, 8, 0, 0, 1, GpuPlan(True, 8)),                  # cluster with executor GPUs
    ("auto", False, 8, 0, 0, 0, GpuPlan(False, 8)),
])
def test_gpu_plan(setting, local, ranks, cuda, driver, executor, expected):
    assert gpu_plan(setting, local, ranks, cuda, driver, executor) == expected


@pytest.mark.unit
def test_gpu_plan_cuda_without_driver_resources_says_why():
    plan = gpu_plan("auto", True, 2, 1, 0, 0)
    assert not plan.use_gpu and "no driver GPU resources" in plan.note
    with pytest.raises(ConfigError, match="no driver GPU resources"):
        gpu_plan(True, True, 2, 1, 0, 0)
    with pytest.raises(ConfigError, match="no CUDA device"):
        gpu_plan(True, True, 2, 0, 1, 0)
    with pytest.raises(ConfigError, match="spark.gpu.enabled=true"):
        gpu_plan(True, False, 2, 0, 0, 0)


@pytest.mark.unit
def test_discover_gpus(tmp_path):
    assert discover_gpus(fake_script(tmp_path, """echo '{"name": "gpu", "addresses": ["0", "3"]}'""")) == ["0", "3"]
    assert discover_gpus(fake_script(tmp_path, "echo 'no driver' >&2; exit 1", "fails.sh")) == []
    assert discover_gpus(fake_script(tmp_path, "echo not json", "junk.sh")) == []
    assert discover_gpus(tmp_path / "missing.sh") == []


@pytest.mark.unit
def test_project_discovery_script_lists_visible_gpus(tmp_path):
    """conf/gpu_discovery.sh with a fake nvidia-smi: every GPU, or those of CUDA_VISIBLE_DEVICES."""
    fake_script(tmp_path, "printf '0\\n1\\n2\\n'", "nvidia-smi")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    run = lambda e: json.loads(subprocess.run(["bash", str(REPO / "conf/gpu_discovery.sh")], env=e,
                                              capture_output=True, text=True, check=True).stdout)
    assert run(env) == {"name": "gpu", "addresses": ["0", "1", "2"]}
    assert run({**env, "CUDA_VISIBLE_DEVICES": "2,0"})["addresses"] == ["2", "0"]


@pytest.mark.unit
def test_local_gpu_pairs(tmp_path):
    script = one_gpu(tmp_path)
    assert local_gpu_pairs("local[*]", script, True) == {
        "spark.driver.resource.gpu.amount": 1, "spark.driver.resource.gpu.discoveryScript": str(script)}
    assert local_gpu_pairs("local[*]", script, False) == {}
    assert local_gpu_pairs("spark://host:7077", script, True) == {}
    assert local_gpu_pairs("local[2]", fake_script(tmp_path, "exit 1", "none.sh"), True) == {}
    assert wants_driver_gpus({}) and wants_driver_gpus({"train": {"use_gpu": "auto"}})
    assert not wants_driver_gpus({"train": {"use_gpu": False}})


CHILD = textwrap.dedent("""
    import json, sys
    from pyspark.ml.torch.distributor import TorchDistributor
    from photoz_spark.config import load_config
    from photoz_spark.spark import get_spark
    from photoz_spark.train.run import session_gpu_plan

    out = {}
    for use_gpu in ("false", "auto"):  # false: the session as before this fix; auto: the job's default
        config = load_config("train.yaml", overrides=["spark.master=local[1]", "spark.driver_memory=1g",
                                                      f"spark.gpu.discovery_script={sys.argv[1]}",
                                                      f"train.use_gpu={use_gpu}", "train.num_processes=2"])
        spark = get_spark(config, extra_conf={"spark.ui.enabled": False})
        try:  # exactly as train/run.py builds it when the plan says GPUs
            distributor = TorchDistributor(num_processes=2, local_mode=True, use_gpu=True)
            out[use_gpu] = {"num_tasks": distributor.num_tasks, "ranks": distributor.num_processes}
        except RuntimeError as err:
            out[use_gpu] = {"error": str(err)}
        gpu = spark.sparkContext.resources.get("gpu")
        out[use_gpu]["addresses"] = list(gpu.addresses) if gpu else []
        plan = session_gpu_plan(spark, {"use_gpu": "auto", "num_processes": 2})
        out[use_gpu]["plan_driver_gpu_cpu_host"] = [plan.use_gpu, plan.num_processes]
        spark.stop()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.spark  # a JVM of its own, in a child process
def test_local_mode_torch_distributor_finds_the_driver_gpu(tmp_path):
    """A local session built by get_spark holds the (fake) GPU, so TorchDistributor(local_mode=True,
    use_gpu=True) no longer raises; without the driver resources it does."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(one_gpu(tmp_path))], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["false"] == {"error": "GPUs were unable to be found on the driver.", "addresses": [],
                            "plan_driver_gpu_cpu_host": [False, 2]}
    # One GPU: one task, and TorchDistributor itself cut the ranks to it (as gpu_plan does first).
    assert out["auto"] == {"num_tasks": 1, "ranks": 1, "addresses": ["0"],
                           "plan_driver_gpu_cpu_host": [False, 2]}  # no CUDA here: the plan stays on CPU
