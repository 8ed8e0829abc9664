"""One way to get a SparkSession, built from the ``spark:`` section of the configuration.

Local masters (``local[...]``) get the session as is. Any other master (``spark://``, ``yarn``,
``k8s://``) is checked before work starts and gets the project shipped to it: see cluster.py
and docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pyspark.sql import SparkSession

from photoz_spark.config import ConfigError, resolve_path

# Cluster settings of the ``spark:`` section that older or hand-written configs may lack.
CLUSTER_DEFAULTS = {"ship_package": True, "executor_python": "", "executor_wait_s": 120,
                    "gpu": {"enabled": False, "executor_amount": 1, "task_amount": 1,
                            "discovery_script": "conf/gpu_discovery.sh"}}
LOOPBACK = ("127.0.0.1", "localhost")
# spark.shuffle_partitions=auto: this many shuffle partitions per core of the cluster, at least the
# minimum (adaptive execution coalesces small ones, it never splits a big one: err high).
SHUFFLE_PARTITIONS_PER_CORE = 4
MIN_SHUFFLE_PARTITIONS = 8
# spark.python_daemon: auto = this project's daemon (photoz_spark.worker_daemon) on a local master
# when the workers' interpreter can import it; spark = Spark's own (pyspark.daemon) everywhere.
PYTHON_DAEMONS = ("auto", "spark")
WORKER_DAEMON = "photoz_spark.worker_daemon"


def is_local(master: str) -> bool:
    """Whether ``master`` runs everything in the driver's JVM (``local``, ``local[N]``, ``local[*]``)."""
    return str(master).startswith("local")


def effective_master(spark_config: dict) -> str:
    """The master to use: ``spark.master``, unless it is local and spark-submit was given a cluster.

    ``spark-submit --master yarn jobs/train.py`` and ``spark-submit jobs/train.py --master yarn``
    both reach the cluster: the job's own setting wins whenever it names a cluster.
    """
    master = str(spark_config["master"])
    if is_local(master) and os.environ.get("PYSPARK_GATEWAY_PORT"):  # started by spark-submit
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()  # connect to spark-submit's JVM, which holds its --master
        submitted = SparkConf().get("spark.master", None)
        if submitted and not is_local(submitted):
            return submitted
    return master


def cluster_settings(spark_config: dict) -> dict:
    """The cluster keys of ``spark_config`` with their defaults filled in."""
    gpu = {**CLUSTER_DEFAULTS["gpu"], **(spark_config.get("gpu") or {})}
    return {**CLUSTER_DEFAULTS, **{k: spark_config[k] for k in CLUSTER_DEFAULTS if k in spark_config}, "gpu": gpu}


def shuffle_partitions(setting, cores: int) -> int:
    """Spark's shuffle partitions for ``spark.shuffle_partitions``: a number as given, or ``auto``.

    ``auto`` sizes them from the cluster (``SHUFFLE_PARTITIONS_PER_CORE`` x its cores, at least
    ``MIN_SHUFFLE_PARTITIONS``: 8 on two cores, 1,024 on 256), so no shuffle (the crossmatch's id
    aggregation, the simulator's colour figure) is held to a fixed task count on a big cluster.

    Args:
        setting: ``spark.shuffle_partitions``: a whole number >= 1 or "auto".
        cores: the cluster's cores (Spark's default parallelism).

    Returns:
        The number of shuffle partitions.

    Raises:
        ConfigError: a setting that is neither.
    """
    if str(setting).strip().lower() == "auto":
        return max(MIN_SHUFFLE_PARTITIONS, SHUFFLE_PARTITIONS_PER_CORE * int(cores))
    if isinstance(setting, bool) or not str(setting).strip().isdigit() or int(setting) < 1:
        raise ConfigError(f"spark.shuffle_partitions must be a whole number >= 1 or auto, got {setting!r}")
    return int(setting)


def validate(spark_config: dict) -> None:
    """Refuse bad cluster settings before a JVM starts.

    Raises:
        ConfigError: with the key to change.
    """
    shuffle_partitions(spark_config["shuffle_partitions"], 1)
    daemon = spark_config.get("python_daemon", "auto")
    if daemon not in PYTHON_DAEMONS:
        raise ConfigError(f"spark.python_daemon must be one of {', '.join(PYTHON_DAEMONS)}, got {daemon!r}")
    cluster = cluster_settings(spark_config)
    if not float(cluster["executor_wait_s"]) > 0:
        raise ConfigError(f"spark.executor_wait_s must be > 0, got {cluster['executor_wait_s']}")
    gpu = cluster["gpu"]
    if not gpu["enabled"]:
        return
    for key in ("executor_amount", "task_amount"):
        if not isinstance(gpu[key], int) or isinstance(gpu[key], bool) or gpu[key] < 1:
            raise ConfigError(f"spark.gpu.{key} must be a whole number >= 1 (TorchDistributor gives each rank "
                              f"whole GPUs), got {gpu[key]!r}")
    if gpu["task_amount"] > gpu["executor_amount"]:
        raise ConfigError(f"spark.gpu.task_amount ({gpu['task_amount']}) exceeds spark.gpu.executor_amount "
                          f"({gpu['executor_amount']}): no task could ever be scheduled")
    if not is_local(spark_config["master"]) and not resolve_path(gpu["discovery_script"]).is_file():
        raise ConfigError(f"spark.gpu.discovery_script {gpu['discovery_script']!r} not found "
                          f"(looked at {resolve_path(gpu['discovery_script'])})")


def _gpu_pairs(spark_config: dict) -> dict:
    # Local mode schedules no executor resources: the driver holds the GPUs (local_gpu_pairs).
    gpu = cluster_settings(spark_config)["gpu"]
    if not gpu["enabled"] or is_local(spark_config["master"]):
        return {}
    return {"spark.executor.resource.gpu.amount": gpu["executor_amount"],
            "spark.task.resource.gpu.amount": gpu["task_amount"],
            "spark.executor.resource.gpu.discoveryScript": str(resolve_path(gpu["discovery_script"]))}


def wants_driver_gpus(config: dict) -> bool:
    """Whether a local session should hold the host's GPUs: unless ``train.use_gpu`` is false.

    Jobs without a ``train`` section (the ablation, which runs training in its session) count as
    ``auto``.
    """
    return (config.get("train") or {}).get("use_gpu", "auto") is not False


def discover_gpus(script, timeout_s: float = 30.0) -> list[str]:
    """The GPU addresses a Spark discovery script prints on this host ([] when it finds none).

    Args:
        script: an executable printing ``{"name": "gpu", "addresses": [...]}`` (conf/gpu_discovery.sh).
        timeout_s: how long nvidia-smi may take.

    Returns:
        The addresses, as strings; [] when the script is missing, fails (no NVIDIA driver) or
        prints something else.
    """
    try:
        done = subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout_s, check=False)
        found = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []
    if not isinstance(found, dict) or found.get("name") != "gpu":
        return []
    return [str(a) for a in found.get("addresses") or []]


def local_gpu_pairs(master: str, discovery_script, wanted: bool) -> dict:
    """Driver GPU resources for a local master, so TorchDistributor(local_mode=True, use_gpu=True) starts.

    TorchDistributor in local mode reads ``spark.driver.resource.gpu.amount`` and the driver's
    ``resources`` (which Spark fills by running the discovery script), and gives its ranks
    those GPUs through CUDA_VISIBLE_DEVICES; without them it raises "GPUs were unable to be
    found on the driver". Cluster masters schedule executor GPUs instead (``_gpu_pairs``).

    Args:
        master: the Spark master.
        discovery_script: the ``spark.gpu.discovery_script`` path (resolved).
        wanted: ``wants_driver_gpus(config)``.

    Returns:
        The two Spark keys, or {} (not local, not wanted, or no GPU found).
    """
    if not is_local(master) or not wanted:
        return {}
    addresses = discover_gpus(discovery_script)
    if not addresses:
        return {}
    return {"spark.driver.resource.gpu.amount": len(addresses),
            "spark.driver.resource.gpu.discoveryScript": str(discovery_script)}


def python_daemon_pairs(master: str, setting) -> dict:
    """The Python daemon of the session: ``photoz_spark.worker_daemon`` where it is safe, else Spark's.

    The project's daemon imports what every worker needs once, before it forks them (~2 CPU s
    less for a job's first Python stage on two cores: ``worker_daemon``). Spark starts it with
    ``python -m``, before any file the driver ships reaches the executor, so it is named only on
    a local master, whose workers run this interpreter from this folder with this environment,
    and only after a child interpreter started the same way has found it (one short process);
    otherwise Spark's own daemon runs, as it would without this setting.

    Args:
        master: the Spark master.
        setting: ``spark.python_daemon`` (auto or spark).

    Returns:
        ``{"spark.python.daemon.module": ...}``, or {} for Spark's default.
    """
    if setting != "auto" or not is_local(master):
        return {}
    python = os.environ.get("PYSPARK_PYTHON") or sys.executable
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({WORKER_DAEMON!r}) is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    return {"spark.python.daemon.module": WORKER_DAEMON} if found else {}


def _master_host(master: str) -> str:
    rest = str(master).split("://", 1)[-1]
    return rest.split(",")[0].rpartition(":")[0] or rest


def loopback_only(master: str) -> bool:
    """Whether the driver (and its UI) listens on 127.0.0.1 only: local mode, or a master on loopback."""
    return is_local(master) or (master.startswith("spark://") and _master_host(master) in LOOPBACK)


def _conf_pairs(spark_config: dict) -> dict[str, str]:
    """Translate the project's ``spark:`` settings into Spark configuration keys.

    Args:
        spark_config: the ``spark`` section of the configuration.

    Returns:
        Spark configuration key -> value, all strings.
    """
    conf = {
        "spark.driver.memory": spark_config["driver_memory"],
        # auto: a placeholder until the cluster's cores are known (``_size_shuffles``)
        "spark.sql.shuffle.partitions": shuffle_partitions(spark_config["shuffle_partitions"], 1),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": spark_config["arrow_batch_size"],
        "spark.ui.showConsoleProgress": "true",
        "spark.ui.enabled": spark_config.get("ui_enabled", True),
        # Timestamps mean the same thing on every machine and in every test.
        "spark.sql.session.timeZone": "UTC",
        **_gpu_pairs(spark_config),
    }
    if loopback_only(str(spark_config["master"])):
        # A laptop on VPN or with an odd hostname must not make the driver unreachable to itself
        # (or to a cluster that listens on loopback only).
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return {key: _conf_value(value) for key, value in conf.items()}


def _conf_value(value) -> str:
    # Spark wants "true"/"false"; Python's str(True) is "True".
    return str(value).lower() if isinstance(value, bool) else str(value)


def get_spark(config: dict, extra_conf: dict | None = None) -> SparkSession:
    """Return the active SparkSession, or build one from ``config["spark"]``.

    On a cluster master the session is checked before it is returned: the master answers,
    an executor registers within ``spark.executor_wait_s``, it runs the driver's Python minor
    version, imports ``photoz_spark`` (shipped as a zip when ``spark.ship_package``) and holds
    the GPUs of ``spark.gpu``.

    Args:
        config: the job configuration; its ``spark`` section has master, app_name,
            driver_memory, shuffle_partitions, arrow_batch_size, log_level and the cluster keys
            (ship_package, executor_python, executor_wait_s, gpu).
        extra_conf: further Spark configuration keys (e.g. ``spark.ui.enabled``), applied last.

    Returns:
        The SparkSession. An already active session is reused as is, so jobs called from
        tests (or from a notebook) share the caller's session instead of starting a second JVM.

    Raises:
        ConfigError: a bad ``spark`` setting.
        cluster.ClusterError: the cluster cannot run the pipeline (the message says what to change).
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    spark_config = {**config["spark"], "master": effective_master(config["spark"])}
    validate(spark_config)
    master = spark_config["master"]
    cluster = None if is_local(master) else cluster_settings(spark_config)
    shipped = None
    conf = _conf_pairs(spark_config)
    conf.update(local_gpu_pairs(master, resolve_path(cluster_settings(spark_config)["gpu"]["discovery_script"]),
                                wants_driver_gpus(config)))
    if cluster is not None:
        from photoz_spark import cluster as cl

        cl.check_master_reachable(master)  # Spark would retry for minutes before saying anything
        if cluster["ship_package"]:
            shipped = cl.package_zip()
            conf.update(cl.shipping_conf(shipped))
    # Without these, executors start the system Python, which lacks the project's packages.
    os.environ["PYSPARK_PYTHON"] = (cluster or {}).get("executor_python") or sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    if loopback_only(master):
        # The UI (port 4040) binds to SPARK_LOCAL_IP, else to every interface; Spark has no
        # setting for it. Effective when this process starts the JVM (python jobs/X.py); under
        # spark-submit export it yourself or set spark.ui_enabled=false (docs/deploy.md).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    conf.update(python_daemon_pairs(master, spark_config.get("python_daemon", "auto")))
    builder = SparkSession.builder.master(master).appName(spark_config["app_name"])
    for key, value in {**conf, **(extra_conf or {})}.items():
        builder = builder.config(key, _conf_value(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_config["log_level"])
    if cluster is not None:
        _prepare_cluster(spark, cluster, shipped)
    _size_shuffles(spark, spark_config["shuffle_partitions"])
    return spark


def _size_shuffles(spark: SparkSession, setting) -> None:
    """``spark.shuffle_partitions=auto``: set the session's shuffle partitions from its cores (once the
    executors are there, on a cluster; with dynamic allocation, the cores it started with)."""
    spark.conf.set("spark.sql.shuffle.partitions",
                   str(shuffle_partitions(setting, spark.sparkContext.defaultParallelism)))


def _prepare_cluster(spark: SparkSession, cluster: dict, shipped) -> None:
    """Ship the package and check the executors; a failed check stops the session it started."""
    from photoz_spark import cluster as cl

    gpu = cluster["gpu"]
    try:
        if shipped is not None:
            cl.ship_package(spark, shipped)
        probes = cl.check_executors(spark, float(cluster["executor_wait_s"]), shipped,
                                    gpus_per_task=gpu["task_amount"] if gpu["enabled"] else 0,
                                    gpus_per_executor=gpu["executor_amount"] if gpu["enabled"] else 0)
    except Exception:
        spark.stop()
        raise
    print(cl.describe(spark.sparkContext.master, probes), file=sys.stderr, flush=True)
