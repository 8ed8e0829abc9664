"""Running on a Spark cluster: ship the package, check the executors, start a throwaway standalone cluster.

``get_spark`` (spark.py) uses the first three groups whenever the master is not ``local[...]``:

* shipping: ``package_zip`` zips ``photoz_spark`` (content-hashed name) and ``ship_package`` adds it to
  the context, so executors need only the dependencies (torch, pyarrow, ...), not the project;
* checks before any work: ``check_master_reachable`` (a TCP connect with a short timeout, instead of
  Spark's endless retries), ``check_executors`` (an executor registers in time, runs the driver's
  Python minor version, imports the package, holds the GPUs asked for);
* ``StandaloneCluster``: one master and N workers from the pyspark installation's own ``spark-class``,
  on 127.0.0.1, for tests and for trying the cluster path on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Self

from photoz_spark import PACKAGE_DIR
from photoz_spark.errors import UserError


class ClusterError(UserError, RuntimeError):
    """The cluster cannot run the pipeline; the message names the setting to change."""


# --- shipping the package ------------------------------------------------------------------------

def _package_files(package_dir: Path) -> list[Path]:
    return sorted(p for p in package_dir.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


def package_zip(dest_dir: str | Path | None = None, package_dir: Path = PACKAGE_DIR) -> Path:
    """Zip the ``photoz_spark`` package (code and package data) for ``SparkContext.addPyFile``.

    Args:
        dest_dir: where the zip goes (default: ``<tmp>/photoz-spark-ship``).
        package_dir: the package to zip.

    Returns:
        The zip, named ``photoz_spark-<content hash>.zip``: an unchanged tree gives the same file
        (reused), a changed one a new name, so executors never mix two versions of the code.
    """
    files = _package_files(package_dir)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes())
    dest = Path(dest_dir or Path(tempfile.gettempdir()) / "photoz-spark-ship")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{package_dir.name}-{digest.hexdigest()[:12]}.zip"
    if not target.is_file():
        partial = dest / f".{target.name}.{os.getpid()}"
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, Path(package_dir.name) / path.relative_to(package_dir))
        partial.replace(target)  # atomic: a concurrent job never ships a half-written zip
    return target


def ship_package(spark, zip_path: Path) -> None:
    """Add the package zip to the context: executors import ``photoz_spark`` from it."""
    spark.sparkContext.addPyFile(str(zip_path))


def shipping_conf(zip_path: Path) -> dict[str, str]:
    """Spark settings that let processes started *by* Python workers import the shipped zip.

    ``addPyFile`` puts the zip on the Python workers' ``sys.path`` only. TorchDistributor's ranks
    are new interpreters (``python -m ...torch_run_process_wrapper``) that inherit the environment,
    not ``sys.path``; executors download added files into their working directory, which is also
    the workers' (and the ranks') current directory, so the bare file name on PYTHONPATH finds it.
    """
    return {"spark.executorEnv.PYTHONPATH": zip_path.name}


# --- checks before any work ----------------------------------------------------------------------

def master_addresses(master: str) -> list[tuple[str, int]]:
    """``(host, port)`` pairs of a ``spark://`` master URL (several for a standby-master setup).

    Returns:
        The pairs; empty for masters that are not ``spark://`` (yarn, k8s://, local).
    """
    if not master.startswith("spark://"):
        return []
    pairs = []
    for part in master[len("spark://"):].split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(f"spark.master {master!r}: expected spark://HOST:PORT (e.g. spark://127.0.0.1:7077)")
        pairs.append((host, int(port)))
    return pairs


def check_master_reachable(master: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``spark://`` master that does not accept connections (Spark itself retries for minutes).

    Raises:
        ClusterError: no address of the master answers within ``timeout_s``.
    """
    pairs = master_addresses(master)
    errors = []
    for host, port in pairs:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as err:
            errors.append(f"{host}:{port}: {err.strerror or err}")
    if pairs:
        raise ClusterError(f"Spark master {master} does not answer ({'; '.join(errors)}): start it, or set "
                           "--master / spark.master to a running master (or local[*] to run on this machine)")


def python_mismatch(driver: tuple[int, int], executors: dict[str, tuple[int, int]]) -> str | None:
    """Compare the executors' Python minor versions with the driver's.

    Args:
        driver: the driver's ``sys.version_info[:2]``.
        executors: executor host (or id) -> its ``sys.version_info[:2]``.

    Returns:
        None when all match, else a message naming the executors and the setting to change.
    """
    wrong = {host: tuple(v) for host, v in executors.items() if tuple(v[:2]) != tuple(driver[:2])}
    if not wrong:
        return None
    found = ", ".join(f"{host} runs {v[0]}.{v[1]}" for host, v in sorted(wrong.items()))
    return (f"executors run a different Python than the driver ({driver[0]}.{driver[1]}): {found}. PySpark needs "
            f"the same minor version on both sides: set spark.executor_python (or PYSPARK_PYTHON) to a Python "
            f"{driver[0]}.{driver[1]} on the executors, or run the driver with the executors' version")


def _probe():
    # Defined inside a function so that cloudpickle ships it by value: the probe must run even
    # where photoz_spark cannot be imported, to say so.
    def probe(_):
        import sys

        from pyspark import TaskContext

        try:
            import photoz_spark
            where = photoz_spark.__file__
        except ImportError as err:
            where = f"ImportError: {err}"
        gpus = TaskContext.get().resources().get("gpu")
        return {"host": socket.gethostname(), "python": list(sys.version_info[:2]), "package": where,
                "executable": sys.executable, "gpus": list(gpus.addresses) if gpus else []}
    return probe


def executor_count(spark) -> int:
    """Executors registered with the driver right now (the driver itself not counted)."""
    infos = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
    return max(0, len(infos) - 1)


def wait_for_executors(spark, timeout_s: float, gpus_per_executor: float = 0) -> int:
    """Wait until at least one executor registered.

    Raises:
        ClusterError: none within ``timeout_s``, with the likely cause (GPUs, cores or memory).
    """
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        n = executor_count(spark)
        if n:
            return n
        time.sleep(0.5)
    raise no_executor_error(spark.sparkContext.master, timeout_s, gpus_per_executor)


def no_executor_error(master: str, timeout_s: float, gpus_per_executor: float = 0) -> ClusterError:
    """The error for a cluster that granted no executor in time, with the likely cause."""
    if gpus_per_executor:
        return ClusterError(
            f"no executor started on {master} within {timeout_s:g} s: no worker offers "
            f"{gpus_per_executor:g} GPU(s) (spark.executor.resource.gpu.amount). Give the workers GPUs "
            "(spark.worker.resource.gpu.amount + discoveryScript, see docs/deploy.md) or set spark.gpu.enabled=false")
    return ClusterError(
        f"no executor started on {master} within {timeout_s:g} s: the cluster has no free worker with the "
        f"cores and memory asked for (spark.executor.cores / spark.executor.memory), or its workers cannot reach "
        f"the driver; check the master's web UI, or raise spark.executor_wait_s")


def _collect_within(sc, rdd, timeout_s: float | None):
    """``rdd.collect()``, cancelled after ``timeout_s`` (None if it did not finish)."""
    if timeout_s is None:
        return rdd.collect()
    import threading

    group, box = f"photoz-probe-{os.getpid()}-{time.time_ns()}", {}

    def run():
        sc.setJobGroup(group, "photoz-spark executor check", interruptOnCancel=True)
        try:
            box["rows"] = rdd.collect()
        except Exception as err:  # noqa: BLE001 - handed to the caller's thread, raised there
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        sc.cancelJobGroup(group)
        return None
    if "error" in box:
        raise box["error"]
    return box["rows"]


def _probe_executors(spark, n_tasks: int, timeout_s: float | None = None, gpus_per_executor: float = 0) -> list[dict]:
    sc = spark.sparkContext
    try:
        rows = _collect_within(sc, sc.parallelize(range(n_tasks), n_tasks).map(_probe()), timeout_s)
        if rows is None:  # cancelled: no executor came for the probe (dynamic allocation)
            raise no_executor_error(sc.master, timeout_s, gpus_per_executor)
        return rows
    except ClusterError:
        raise
    except Exception as err:  # PySpark's own checks fail the probe task: translate them
        text = str(err)
        if "PYTHON_VERSION_MISMATCH" in text or "different version" in text:
            found = text[text.find("Python in worker"):].splitlines()[0] if "Python in worker" in text else ""
            raise ClusterError(f"executors run a different Python minor version than the driver "
                               f"({sys.version_info[0]}.{sys.version_info[1]}): {found or text.strip()[:200]} "
                               "Set spark.executor_python (or PYSPARK_PYTHON) to a Python of the driver's minor "
                               "version on the executors") from err
        raise ClusterError(f"executors could not run a Python task ({type(err).__name__}: "
                           f"{text.strip().splitlines()[0] if text.strip() else ''}): check spark.executor_python "
                           "and that it has the project's dependencies (torch, pyarrow, pandas, mlflow, ...)") from err


def check_executors(spark, wait_s: float, shipped: Path | None, gpus_per_task: float = 0,
                    gpus_per_executor: float = 0) -> list[dict]:
    """Check, before any work, that the executors can run the pipeline.

    Args:
        spark: a SparkSession on a cluster master.
        wait_s: how long to wait for the first executor.
        shipped: the package zip added to the context (None: the executors must have the package).
        gpus_per_task: ``spark.task.resource.gpu.amount`` asked for (0: none).
        gpus_per_executor: ``spark.executor.resource.gpu.amount`` asked for (0: none).

    Returns:
        One probe per task: host, python, package (``photoz_spark.__file__``), executable, gpus.

    Raises:
        ClusterError: no executor in time, another Python minor version, no package, or missing GPUs.
    """
    if spark.sparkContext.getConf().get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        # Executors come only for pending tasks: the probe asks for one, within the same time.
        probes = _probe_executors(spark, 1, timeout_s=wait_s, gpus_per_executor=gpus_per_executor)
    else:
        probes = _probe_executors(spark, max(wait_for_executors(spark, wait_s, gpus_per_executor), 1))
    problem = python_mismatch(tuple(sys.version_info[:2]), {f"{p['host']} ({p['executable']})": tuple(p["python"])
                                                            for p in probes})
    if problem:
        raise ClusterError(problem)
    missing = [p for p in probes if p["package"].startswith("ImportError")]
    if missing:
        fix = ("the shipped zip did not reach them: check spark.executorEnv.PYTHONPATH and the executor logs"
               if shipped else "set spark.ship_package=true, or install the project on every executor")
        raise ClusterError(f"executors cannot import photoz_spark ({missing[0]['package']}): {fix}")
    if gpus_per_task and any(len(p["gpus"]) < gpus_per_task for p in probes):
        short = next(p for p in probes if len(p["gpus"]) < gpus_per_task)
        raise ClusterError(f"a task on {short['host']} got GPUs {short['gpus']}, fewer than "
                           f"spark.task.resource.gpu.amount={gpus_per_task:g}: fix the workers' GPU discovery "
                           "(spark.worker.resource.gpu.*) or set spark.gpu.enabled=false")
    return probes


def describe(master: str, probes: list[dict]) -> str:
    """One line for the job log: executors, their Python, where their photoz_spark came from."""
    python = ", ".join(sorted({".".join(map(str, p["python"])) for p in probes}))
    places = ", ".join(sorted({p["package"].split("/photoz_spark/__init__.py")[0] for p in probes}))
    gpus = sum(len(p["gpus"]) for p in probes)
    return (f"cluster: {master}, {len(probes)} executor task(s) probed, Python {python}, "
            f"photoz_spark from {places}" + (f", {gpus} GPU(s)" if gpus else ""))


# --- a standalone cluster on this machine --------------------------------------------------------

def spark_home() -> Path:
    """The pyspark installation, which carries Spark's jars and ``bin/spark-class``."""
    import pyspark
    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneCluster:
    """One Spark master and ``n_workers`` workers on 127.0.0.1, each a ``spark-class`` process group.

    Use as a context manager; ``master_url`` is what ``--master`` takes. Logs go to
    ``base_dir/logs/<process>.log`` and their tails are in the error when something does not start.
    """

    def __init__(self, base_dir: str | Path, n_workers: int = 2, cores: int = 1, memory: str = "1g",
                 env: dict | None = None):
        """Args:
            base_dir: a scratch folder for logs and the workers' work dirs (also their cwd).
            n_workers: worker processes.
            cores: cores each worker offers.
            memory: memory each worker offers (e.g. "1g").
            env: extra environment for the master and the workers.
        """
        if n_workers < 1 or cores < 1:
            raise ValueError(f"need n_workers >= 1 and cores >= 1, got {n_workers} and {cores}")
        self.base_dir = Path(base_dir)
        self.n_workers, self.cores, self.memory = n_workers, cores, memory
        self.env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_LOG_DIR": str(self.base_dir / "logs"), **(env or {})}
        self.env.pop("PYTHONPATH", None)  # the workers' Python must not see the source tree by accident
        self.port, self.webui_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    @property
    def webui_url(self) -> str:
        return f"http://127.0.0.1:{self.webui_port}"

    def _launch(self, name: str, *args: str) -> None:
        logs = self.base_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *args], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, cwd=self.base_dir, start_new_session=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of every process's log, for failure messages."""
        out = []
        for name in self.procs:
            path = self.base_dir / "logs" / f"{name}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []
            out.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(out)

    def state(self) -> dict:
        """The master's JSON status (``/json/``): workers, alive workers, applications."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=2) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        try:
            return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")
        except OSError:
            return 0

    def start(self, timeout_s: float = 120) -> Self:
        """Start the master and the workers; return once every worker registered.

        Raises:
            ClusterError: a process died or the workers did not register in ``timeout_s`` (with log tails).
        """
        self._launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                     "--port", str(self.port), "--webui-port", str(self.webui_port))
        for i in range(self.n_workers):
            work_dir = self.base_dir / f"worker-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
            self._launch(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                         "--webui-port", str(free_port()), "--cores", str(self.cores), "--memory", self.memory,
                         "--work-dir", str(work_dir), self.master_url)
        deadline = time.time() + timeout_s
        while self.alive_workers() < self.n_workers:
            dead = [name for name, p in self.procs.items() if p.poll() is not None]
            if dead or time.time() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"workers did not register in {timeout_s:g} s"
                self.stop()
                raise ClusterError(f"standalone cluster did not start: {why}\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def stop(self, timeout_s: float = 20) -> None:
        """Stop the workers, then the master (each process group, TERM then KILL)."""
        for name in [*sorted(n for n in self.procs if n != "master"), "master"]:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _main(argv: list[str]) -> None:
    """``python -m photoz_spark.cluster [N_WORKERS]``: a local standalone cluster until Ctrl-C."""
    n = int(argv[0]) if argv else 2
    with StandaloneCluster(Path(tempfile.mkdtemp(prefix="photoz-cluster-")), n_workers=n) as cluster:
        print(f"master {cluster.master_url}  web UI {cluster.webui_url}  logs {cluster.base_dir / 'logs'}")
        print(f"e.g.: spark-submit jobs/simulate_sky.py --master {cluster.master_url}   (Ctrl-C stops the cluster)")
        try:
            while all(p.poll() is None for p in cluster.procs.values()):
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _main(sys.argv[1:])
