"""The pipeline on a real Spark standalone cluster (1 master + 2 workers on 127.0.0.1), compared with local mode.

Every cluster job is a ``spark-submit`` subprocess (the path users take; it also keeps the shared
local session of conftest.py untouched). The executors run a Python *without* the project: a venv
that sees the dependencies of .venv but not its editable install of photoz_spark, so they can only
import the package from the zip that get_spark ships (proved the other way round by
``test_executors_without_the_package_are_refused``).

Set PHOTOZ_CLUSTER_TIMINGS=FILE.json to keep the per-stage times (cluster vs local).
"""

import json
import os
import re
import site
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from photoz_spark import PROJECT_DIR, cluster, hats
from photoz_spark.config import ConfigError, load_config
from photoz_spark.jobs import build_features, score_catalog, simulate_sky
from photoz_spark.jobs import crossmatch as crossmatch_job
from photoz_spark.spark import _conf_pairs, validate

pytestmark = pytest.mark.cluster

SKY = ["sim.footprint.radius_deg=0.3", "sim.quasars.density_deg2=600", "sim.field.galaxy_density_deg2=8000",
       "sim.field.star_density_deg2=1000", "sim.figure=false"]
SPARK = ["spark.shuffle_partitions=4", "spark.driver_memory=1g"]
SMALL_MODEL = ["model.hidden1=16", "model.hidden2=8", "model.dense=16", "model.n_components=3",
               "train.batch_size=32", "train.max_epochs=2", "train.lr=0.01", "train.num_processes=2"]
IDS = {"dr16q": "THING_ID", "sdss": "objID", "desi_ls": "LS_ID"}


# --- no cluster needed ----------------------------------------------------------------------------

def spark_section(**over) -> dict:
    return {**load_config()["spark"], **over}


def test_gpu_settings_translate_to_spark_resources():
    gpu = {"enabled": True, "executor_amount": 2, "task_amount": 1, "discovery_script": "conf/gpu_discovery.sh"}
    conf = _conf_pairs(spark_section(master="spark://10.0.0.1:7077", gpu=gpu))
    assert conf["spark.executor.resource.gpu.amount"] == "2" and conf["spark.task.resource.gpu.amount"] == "1"
    assert conf["spark.executor.resource.gpu.discoveryScript"] == str(PROJECT_DIR / "conf" / "gpu_discovery.sh")
    assert "spark.driver.host" not in conf, "a remote cluster must reach the driver on its real address"
    assert not any("resource.gpu" in k for k in _conf_pairs(spark_section(master="spark://h:7077"))), "off by default"
    assert not any("resource.gpu" in k for k in _conf_pairs(spark_section(master="local[2]", gpu=gpu)))
    assert _conf_pairs(spark_section(master="spark://127.0.0.1:7077"))["spark.driver.host"] == "127.0.0.1"


@pytest.mark.parametrize("gpu, message", [
    ({"task_amount": 0}, "spark.gpu.task_amount must be a whole number >= 1"),
    ({"executor_amount": 0.5}, "spark.gpu.executor_amount must be a whole number >= 1"),
    ({"executor_amount": 1, "task_amount": 2}, "exceeds spark.gpu.executor_amount"),
    ({"discovery_script": "conf/nope.sh"}, "spark.gpu.discovery_script 'conf/nope.sh' not found"),
])
def test_bad_gpu_settings_refused(gpu, message):
    base = {"enabled": True, "executor_amount": 1, "task_amount": 1, "discovery_script": "conf/gpu_discovery.sh"}
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(spark_section(master="spark://h:7077", gpu={**base, **gpu}))


def _discover(tmp_path, smi_output: str | None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi_output is not None:  # a fake nvidia-smi that prints GPU indices like the real one
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\nprintf '{smi_output}'\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run([str(PROJECT_DIR / "conf" / "gpu_discovery.sh")], check=False, capture_output=True, text=True,
                          env=env)


@pytest.mark.parametrize("smi_output, addresses", [("0\\n1\\n2\\n3\\n", ["0", "1", "2", "3"]), ("0\\n", ["0"]),
                                                   ("", [])])
def test_gpu_discovery_script_prints_spark_resource_json(tmp_path, smi_output, addresses):
    result = _discover(tmp_path, smi_output)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "gpu", "addresses": addresses}


def test_gpu_discovery_script_without_nvidia_smi_says_so(tmp_path):
    result = _discover(tmp_path, None)
    assert result.returncode != 0 and "nvidia-smi not found" in result.stderr and "spark.gpu.enabled" in result.stderr


def test_python_version_comparison():
    assert cluster.python_mismatch((3, 11), {"a": (3, 11), "b": (3, 11)}) is None
    message = cluster.python_mismatch((3, 11), {"a": (3, 11), "node7": (3, 12)})
    assert "node7 runs 3.12" in message and "a runs" not in message
    assert "(3.11)" in message and "spark.executor_python" in message


class _FailingSpark:
    """Just enough of a SparkSession for the probe job to fail the way PySpark fails it."""

    def __init__(self, message: str):
        self.sparkContext, self.message = self, message

    def parallelize(self, *_):
        return self

    def map(self, _):
        return self

    def collect(self):
        raise RuntimeError(self.message)


def test_executor_python_mismatch_reported_with_the_setting():
    pyspark_says = ("[PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.12 than that in driver: "
                    "3.11, PySpark cannot run with different minor versions.\nPlease check environment variables")
    with pytest.raises(cluster.ClusterError, match="different Python minor version") as err:
        cluster._probe_executors(_FailingSpark(pyspark_says), 2)
    assert "worker has different version: 3.12" in str(err.value) and "spark.executor_python" in str(err.value)
    with pytest.raises(cluster.ClusterError, match="could not run a Python task .*spark.executor_python"):
        cluster._probe_executors(_FailingSpark("Cannot run program \"/nope/python\""), 2)


def test_master_url_parsing():
    assert cluster.master_addresses("spark://h1:7077,h2:7078") == [("h1", 7077), ("h2", 7078)]
    assert cluster.master_addresses("yarn") == [] == cluster.master_addresses("local[2]")
    with pytest.raises(cluster.ClusterError, match="expected spark://HOST:PORT"):
        cluster.master_addresses("spark://nohost")


def test_package_zip_holds_code_and_data_only(tmp_path):
    import zipfile

    first, again = cluster.package_zip(tmp_path), cluster.package_zip(tmp_path)
    assert first == again and re.fullmatch(r"photoz_spark-[0-9a-f]{12}\.zip", first.name)
    names = zipfile.ZipFile(first).namelist()
    assert "photoz_spark/__init__.py" in names and "photoz_spark/train/run.py" in names
    assert any(n.startswith("photoz_spark/sim/data/") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_unreachable_master_refused_before_work(tmp_path):
    url = f"spark://127.0.0.1:{cluster.free_port()}"  # nothing listens there
    with pytest.raises(cluster.ClusterError, match="does not answer"):
        cluster.check_master_reachable(url, timeout_s=2)
    t0 = time.time()
    result = subprocess.run([sys.executable, str(PROJECT_DIR / "jobs" / "simulate_sky.py"), "--workdir",
                             str(tmp_path / "wd"), "--master", url, *SKY], check=False, capture_output=True,
                            text=True, env=submit_env(), cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert f"Spark master {url} does not answer" in result.stderr and "spark.master" in result.stderr
    assert "Traceback" not in result.stderr  # one line that names the setting, not a stack trace
    assert time.time() - t0 < 60 and not (tmp_path / "wd" / "catalogs").exists()


# --- the standalone cluster -------------------------------------------------------------------------

def submit_env() -> dict:
    """A clean environment for a job: nothing of this test process's Spark, MLflow or PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_", "SPARK_")) and k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    return {**env, "SPARK_HOME": str(cluster.spark_home()), "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """One master and two 1-core / 1 GiB workers from pyspark's spark-class, stopped at the end."""
    t0 = time.time()
    with cluster.StandaloneCluster(tmp_path_factory.mktemp("cluster"), n_workers=2, cores=1, memory="1g") as c:
        record("cluster", "start_s", round(time.time() - t0, 1))
        yield c


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python for the executors with the dependencies of .venv but without its photoz_spark."""
    venv = tmp_path_factory.mktemp("executor-venv")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    # A .pth line adds the folder to sys.path without running the .pth files in it, so the
    # editable install's import hook (__editable__...pth) stays out.
    (site_dir / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import torch, pyarrow, mlflow, pyspark\nimport photoz_spark"],
                           check=False, capture_output=True, text=True, cwd=venv,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert "No module named 'photoz_spark'" in probe.stderr, probe.stderr  # dependencies yes, project no
    return python


def submit(standalone, job: str, workdir: Path, *args: str, master_after_job: bool = False,
           timeout: int = 400) -> dict:
    """``spark-submit jobs/<job>.py`` against the cluster from a folder outside the repository."""
    spark_submit = str(cluster.spark_home() / "bin" / "spark-submit")
    master = ["--master", standalone.master_url]
    cmd = [spark_submit, *([] if master_after_job else master), "--conf", "spark.ui.enabled=false",
           str(PROJECT_DIR / "jobs" / f"{job}.py"), *(master if master_after_job else []),
           "--workdir", str(workdir), *SPARK, *args]
    cwd = workdir.parent / "submit"
    cwd.mkdir(exist_ok=True)
    t0 = time.time()
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=submit_env(), cwd=cwd,
                            timeout=timeout)
    logs = workdir.parent / "logs"
    logs.mkdir(exist_ok=True)
    (logs / f"{job}.out").write_text(result.stdout)
    (logs / f"{job}.err").write_text(result.stderr)
    # spark-submit merges the Python driver's stderr into its stdout: "output" has both
    return {"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr,
            "output": result.stdout + result.stderr, "wall_s": time.time() - t0}


def record(group: str, key: str, value) -> None:
    """Keep a timing in the JSON file named by PHOTOZ_CLUSTER_TIMINGS (nothing when unset)."""
    path = os.environ.get("PHOTOZ_CLUSTER_TIMINGS")
    if path:
        data = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        data.setdefault(group, {})[key] = value
        Path(path).write_text(json.dumps(data, indent=1))


def _time_line(stdout: str) -> str:
    return next((ln for ln in stdout.splitlines() if ln.startswith(("time ", "training "))), "")


def _failure(step: dict, standalone) -> str:
    return f"{step['stdout'][-3000:]}\n{step['stderr'][-6000:]}\n{standalone.log_tail()}"


def run_on_cluster(standalone, workdir: Path, jobs, executor_python: str) -> dict:
    steps = {}
    for job, args, after in jobs:
        steps[job] = submit(standalone, job, workdir, f"spark.executor_python={executor_python}", *args,
                            master_after_job=after)
        record("cluster_spark_submit_wall_s", job, round(steps[job]["wall_s"], 1))
        record("cluster_job_time_line", job, _time_line(steps[job]["stdout"]))
        assert steps[job]["rc"] == 0, f"{job} failed on the cluster:\n{_failure(steps[job], standalone)}"
    return steps


@pytest.fixture(scope="module")
def cluster_run(standalone, bare_python, tmp_path_factory):
    """simulate -> crossmatch -> features -> train (2 ranks, one per executor), all on the cluster."""
    workdir = tmp_path_factory.mktemp("on-cluster") / "workdir"
    # Both ways of naming the master: spark-submit's option, and the job's own.
    jobs = (("simulate_sky", SKY, False), ("crossmatch", [], False), ("build_features", [], False),
            ("train", SMALL_MODEL, True))
    return workdir, run_on_cluster(standalone, workdir, jobs, bare_python)


@pytest.fixture(scope="module")
def cluster_scored(standalone, bare_python, cluster_run) -> dict:
    """Score matched/dr16q on the cluster with the model version 1 trained there."""
    workdir, _ = cluster_run
    return run_on_cluster(standalone, workdir, [("score_catalog", ["score.version=1"], True)], bare_python)


def run_local(name: str, job, args: list[str]) -> None:
    t0 = time.time()
    job.main(args)
    record("local_in_process_wall_s", name, round(time.time() - t0, 1))


@pytest.fixture(scope="module")
def local_run(spark, cluster_run, tmp_path_factory) -> Path:
    """simulate, crossmatch and features in local mode on the shared session (after the cluster run)."""
    workdir = tmp_path_factory.mktemp("local") / "workdir"
    common = ["--workdir", str(workdir), *SPARK]
    for name, job, args in (("simulate_sky", simulate_sky, SKY), ("crossmatch", crossmatch_job, []),
                            ("build_features", build_features, [])):
        run_local(name, job, [*common, *args])
    return workdir


@pytest.fixture(scope="module")
def local_scored(local_run, cluster_run) -> Path:
    """Scoring in local mode with the model the cluster trained (its registry)."""
    cluster_dir, _ = cluster_run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(cluster_dir / 'mlflow' / 'mlflow.db').resolve()}")
        run_local("score_catalog", score_catalog, ["--workdir", str(local_run), *SPARK, "score.version=1"])
    return local_run


def read(path: Path) -> pa.Table:
    return pq.read_table(path / hats.DATASET_DIR, partitioning=None)


def assert_same_table(a: pa.Table, b: pa.Table, key: str, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Same columns and, row by row (matched on ``key``), the same values (NaN equals NaN)."""
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    a, b = a.sort_by(key), b.sort_by(key)
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if pa.types.is_list(x.type) or pa.types.is_large_list(x.type) or pa.types.is_fixed_size_list(x.type):
            assert x.value_lengths().to_pylist() == y.value_lengths().to_pylist(), name
            x, y = x.flatten(), y.flatten()
        if pa.types.is_floating(x.type) and (rtol or atol):
            np.testing.assert_allclose(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                                       rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
        elif pa.types.is_floating(x.type) or pa.types.is_integer(x.type):
            np.testing.assert_array_equal(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                                          err_msg=name)
        else:
            assert x.to_pylist() == y.to_pylist(), name


def test_pipeline_runs_on_the_cluster_with_the_shipped_package(cluster_run, standalone):
    _, steps = cluster_run
    for job, step in steps.items():
        line = next((ln for ln in step["output"].splitlines() if ln.startswith("cluster: ")), "")
        assert f"cluster: {standalone.master_url}" in line, f"{job}: no executor check line"
        assert re.search(r"photoz_spark from \./photoz_spark-[0-9a-f]{12}\.zip$", line), line
    assert re.search(r"CPU, cluster mode", steps["train"]["stdout"]), steps["train"]["stdout"][-2000:]
    assert re.search(r"registry +version 1 is now 'champion'", steps["train"]["stdout"])
    apps = standalone.state()["completedapps"]
    assert len(apps) >= len(steps) and all(a["state"] == "FINISHED" for a in apps)


def test_deterministic_stages_match_local_mode(cluster_run, local_run):
    cluster_dir, _ = cluster_run
    local_dir = local_run
    for name, key in IDS.items():
        assert_same_table(read(cluster_dir / "catalogs" / name), read(local_dir / "catalogs" / name), key)
        assert (hats.read_properties(cluster_dir / "catalogs" / name)["hats_nrows"]
                == hats.read_properties(local_dir / "catalogs" / name)["hats_nrows"])
    assert_same_table(read(cluster_dir / "matched" / "dr16q"), read(local_dir / "matched" / "dr16q"), "THING_ID")
    features = "features/all14"
    assert_same_table(read(cluster_dir / features), read(local_dir / features), "id")
    assert json.loads((cluster_dir / features / "layout.json").read_text()) == json.loads(
        (local_dir / features / "layout.json").read_text())
    stats = [json.loads((d / features / "stats.json").read_text()) for d in (cluster_dir, local_dir)]
    for key in ("mean", "std"):  # Spark may add partial sums in another order: equal to rounding
        np.testing.assert_allclose(stats[0][key], stats[1][key], rtol=1e-9)


def test_same_model_scores_alike_on_cluster_and_local(cluster_run, cluster_scored, local_scored, standalone):
    cluster_dir, _ = cluster_run
    local_dir = local_scored
    assert f"cluster: {standalone.master_url}" in cluster_scored["score_catalog"]["output"]
    on_cluster, local = read(cluster_dir / "scores" / "dr16q"), read(local_dir / "scores" / "dr16q")
    assert on_cluster.num_rows == int(hats.read_properties(cluster_dir / "matched" / "dr16q")["hats_nrows"]) > 100
    assert hats.read_properties(cluster_dir / "scores" / "dr16q")["photoz_model_version"] == "1"
    assert_same_table(on_cluster, local, "THING_ID", rtol=1e-5, atol=1e-5)


def test_executors_without_the_package_are_refused(standalone, bare_python, tmp_path):
    step = submit(standalone, "simulate_sky", tmp_path / "workdir", f"spark.executor_python={bare_python}",
                  "spark.ship_package=false", "spark.executor_wait_s=60", *SKY)
    assert step["rc"] != 0
    assert "executors cannot import photoz_spark (ImportError: No module named 'photoz_spark')" in step["output"]
    assert "set spark.ship_package=true" in step["output"]
    assert not (tmp_path / "workdir" / "catalogs").exists()


def test_requested_gpus_that_no_worker_has_are_refused(standalone, tmp_path):
    step = submit(standalone, "simulate_sky", tmp_path / "workdir", "spark.gpu.enabled=true",
                  "spark.executor_wait_s=4", *SKY)
    assert step["rc"] != 0
    assert "no worker offers 1 GPU(s) (spark.executor.resource.gpu.amount)" in step["output"], step["output"][-3000:]
    assert "spark.gpu.enabled=false" in step["output"]
