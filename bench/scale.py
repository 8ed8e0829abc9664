"""Scale test (issue #16 item 5): the real jobs at N rows; does the driver stay flat, is task time linear?

Run: PYTHONPATH=. .venv/bin/python bench/scale.py [--rows 100000 1000000 10000000] [--master standalone]

For each N it runs, as subprocesses exactly as a user would (``python jobs/X.py --workdir W ...``):

1. ``simulate_sky``: a sky whose ``desi_ls`` catalog has ~N rows and ``dr16q`` ~N/10 (quasar density
   raised to 5000 deg^-2; footprint radius from the measured density; catalogs at order 5);
2. ``crossmatch``: dr16q (~N/10 left rows) x desi_ls (~N right rows);
3. ``score_catalog`` on ``catalogs/desi_ls`` (~N rows) with a registered small network (desi_wise7,
   hidden sizes 16, K = 5, one epoch on a tiny sky, in a private MLflow SQLite store under the
   bench workdir: the network's size changes the task time per row, not what the driver holds).

Per stage it records wall and CPU seconds, rows, and memory, keeping the driver apart from the
task work:

* ``--master standalone`` (default): a throwaway standalone cluster (``cluster.StandaloneCluster``,
  2 workers x 1 core). The driver is the job's Python process and its own JVM, which runs no
  task; executors are other processes (children of the workers). Driver peak RSS = the kernel's
  high-water mark (``/proc/PID/status`` VmHWM) of each of the two, read every ``--poll`` s.
* ``--master local[2]``: executors live inside the driver JVM, so the JVM column is driver + task
  threads; the Python workers (children of the JVM) are counted as task side.

Task time comes from Spark's event log (``spark.eventLog.*`` through ``PYSPARK_SUBMIT_ARGS``, so
the job command is unchanged): the sum of every task's executor run time, the bytes the tasks sent
back to the driver (Result Size), and the driver JVM's peak heap in use (stage executor metrics of
executor "driver"). CPU seconds are read from ``/proc/PID/stat`` of every process of the driver and
of the executors. The machine is shared: compare CPU seconds and per-row rates, not wall times.

Prints one table over all N measured so far (results accumulate in ``WORKDIR/results.json``) and,
per stage, the least-squares slope of driver peak RSS vs rows (MiB per 10^6 rows) and of task time
per row vs rows. Each N's data is deleted after its stages unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUASAR_DENSITY = 5000.0  # deg^-2: with the field's ~50k desi_ls rows per deg^2, dr16q is ~N/10
CATALOG_ORDER = 5        # 3.4 deg^2 partitions: several tasks from 10^6 rows on
MODEL_NAME = "scale-desi_wise7"
SKY = ["sim.figure=false", "'sim.catalogs=[dr16q,desi_ls]'", f"sim.quasars.density_deg2={QUASAR_DENSITY}",
       f"sim.catalog_order={CATALOG_ORDER}"]
TINY_NETWORK = ["model.hidden1=16", "model.hidden2=16", "model.dense=16", "model.n_components=5"]
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 2**20


# --- processes ---------------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds user + system, VmRSS bytes, VmHWM bytes) of a live process, None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "; utime, stime are fields 14, 15
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    mem = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines()
           if line.startswith(("VmRSS", "VmHWM"))}
    return cpu, mem.get("VmRSS", 0), mem.get("VmHWM", 0)


def _is_java(proc) -> bool:
    try:
        return proc.name() == "java" or Path(proc.exe()).name == "java"
    except Exception:  # noqa: BLE001 - a process that ended while we looked
        return False


class Monitor:
    """Samples the job's processes every ``interval`` s: driver Python, driver JVM, task side.

    Args:
        root_pid: the job's Python process (the driver).
        executor_parents: PIDs whose descendants are executors (standalone workers); empty in local mode.
        interval: seconds between samples.
    """

    def __init__(self, root_pid: int, executor_parents: list[int], interval: float):
        import psutil

        self.psutil, self.root, self.parents, self.interval = psutil, root_pid, executor_parents, interval
        self.cpu: dict[int, tuple[str, float]] = {}   # pid -> (class, latest CPU seconds)
        self.hwm = {"driver_python": 0, "driver_jvm": 0}
        self.peak_sum = {"tasks": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _classes(self) -> dict[int, str]:
        """pid -> driver_python | driver_jvm | tasks | other, for every live process of the job."""
        out = {self.root: "driver_python"}
        try:
            children = self.psutil.Process(self.root).children(recursive=True)
        except self.psutil.Error:
            children = []
        jvm = next((c for c in children if _is_java(c)), None)
        task_side = set()
        if jvm is not None:
            out[jvm.pid] = "driver_jvm"
            try:  # local mode: the Python workers the JVM starts run the tasks
                task_side = {c.pid for c in jvm.children(recursive=True)}
            except self.psutil.Error:
                pass
        for child in children:
            out.setdefault(child.pid, "tasks" if child.pid in task_side else "other")
        for parent in self.parents:
            try:
                for child in self.psutil.Process(parent).children(recursive=True):
                    out[child.pid] = "tasks"
            except self.psutil.Error:
                pass
        return out

    def sample(self) -> None:
        summed = 0
        for pid, cls in self._classes().items():
            stat = _proc_stat(pid)
            if stat is None:
                continue
            cpu, rss, hwm = stat
            self.cpu[pid] = (cls, cpu)
            if cls in self.hwm:
                self.hwm[cls] = max(self.hwm[cls], hwm)
            elif cls == "tasks":
                summed += rss
        self.peak_sum["tasks"] = max(self.peak_sum["tasks"], summed)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        cpu: dict[str, float] = {}
        for cls, seconds in self.cpu.values():
            cpu[cls] = cpu.get(cls, 0.0) + seconds
        return {"cpu_s": cpu, "driver_python_peak_mib": self.hwm["driver_python"] / MIB,
                "driver_jvm_peak_mib": self.hwm["driver_jvm"] / MIB,
                "task_processes_peak_mib": self.peak_sum["tasks"] / MIB}


def baseline_cpu(parents: list[int]) -> float:
    """CPU seconds already spent by the executors' live processes (none between jobs, normally)."""
    import psutil

    total = 0.0
    for parent in parents:
        try:
            for child in psutil.Process(parent).children(recursive=True):
                stat = _proc_stat(child.pid)
                total += stat[0] if stat else 0.0
        except psutil.Error:
            pass
    return total


# --- Spark event log -----------------------------------------------------------------------------

def event_log_args(folder: Path) -> str:
    """``PYSPARK_SUBMIT_ARGS`` that make the job write an uncompressed event log into ``folder``."""
    conf = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": folder.as_uri(),
            "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false",
            "spark.eventLog.logStageExecutorMetrics": "true"}
    return " ".join(f"--conf {k}={v}" for k, v in conf.items()) + " pyspark-shell"


def read_event_log(folder: Path) -> dict:
    """Task run time, task CPU (JVM threads), bytes sent to the driver, driver peak heap, from the logs.

    Returns:
        task_s (sum of Executor Run Time), tasks, result_bytes (sum of Result Size), driver_heap_peak_mib.
    """
    run_ms = result = tasks = heap = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if '"SparkListenerTaskEnd"' in line:
                    metrics = json.loads(line).get("Task Metrics") or {}
                    run_ms += metrics.get("Executor Run Time", 0)
                    result += metrics.get("Result Size", 0)
                    tasks += 1
                elif '"SparkListenerStageExecutorMetrics"' in line:
                    event = json.loads(line)
                    if event.get("Executor ID") == "driver":
                        heap = max(heap, event.get("Executor Metrics", {}).get("JVMHeapMemory", 0))
    return {"task_s": run_ms / 1000, "tasks": tasks, "result_bytes": result, "driver_heap_peak_mib": heap / MIB}


# --- running a job -------------------------------------------------------------------------------

def job_env(events: Path | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the model's store is named on the command line
    if events is not None:
        events.mkdir(parents=True, exist_ok=True)
        env["PYSPARK_SUBMIT_ARGS"] = event_log_args(events)
    return env


def run_job(script: str, args: list[str], log: Path, *, events: Path | None = None,
            executor_parents: list[int] = (), interval: float = 0.25) -> dict:
    """Run ``python jobs/<script> args`` (shell-quoted args allowed), measured; raises if it fails."""
    command = [sys.executable, str(ROOT / "jobs" / script), *(a for arg in args for a in shlex.split(arg))]
    log.parent.mkdir(parents=True, exist_ok=True)
    before = baseline_cpu(list(executor_parents))
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=job_env(events))
        monitor = Monitor(proc.pid, list(executor_parents), interval)
        code = proc.wait()
        wall = time.perf_counter() - t0
    measured = monitor.stop()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{script} failed (exit {code}); log {log}:\n{tail}")
    measured["cpu_s"]["tasks"] = max(0.0, measured["cpu_s"].get("tasks", 0.0) - before)
    return {"wall_s": wall, **measured, **(read_event_log(events) if events else {})}


def rows_of(catalog: Path) -> int:
    from photoz_spark import hats

    return int(hats.read_properties(catalog)["hats_nrows"])


# --- the model and the sky -----------------------------------------------------------------------

def prepare_model(workdir: Path, master: str) -> tuple[str, float]:
    """Train and register the small desi_wise7 network once; returns (tracking URI, desi_ls rows per deg^2)."""
    from photoz_spark import hats
    from photoz_spark.sim.sky import pixel_area_deg2

    model = workdir / "model"
    ready = model / "ready.json"
    uri = f"sqlite:///{(model / 'mlflow' / 'mlflow.db').resolve()}"
    if ready.is_file():
        return uri, json.loads(ready.read_text())["density"]
    shutil.rmtree(model, ignore_errors=True)
    common = ["--workdir", str(model), "--master", master, f"cache_dir={workdir / 'cache'}"]
    logs = workdir / "logs" / "model"
    print("model: a tiny sky, crossmatch, features and one epoch of a small desi_wise7 network ...", flush=True)
    run_job("simulate_sky.py", [*common, *SKY, "sim.footprint.radius_deg=0.7"], logs / "simulate.log")
    run_job("crossmatch.py", [*common, "'crossmatch.right=[desi_ls]'"], logs / "crossmatch.log")
    run_job("build_features.py", [*common, "--band-set", "desi_wise7"], logs / "features.log")
    run_job("train.py", [*common, "--band-set", "desi_wise7", "train.max_epochs=1", "train.num_processes=1",
                         f"mlflow.model_name={MODEL_NAME}", *TINY_NETWORK], logs / "train.log")
    desi = model / "catalogs" / "desi_ls"
    area = int(hats.read_properties(desi)["photoz_sim_pixels"]) * pixel_area_deg2(6)
    density = rows_of(desi) / area
    ready.write_text(json.dumps({"density": density}))
    for folder in ("catalogs", "matched", "features", "truth"):  # keep the registry only
        shutil.rmtree(model / folder, ignore_errors=True)
    return uri, density


def radius_for(rows: int, density: float) -> float:
    """Footprint radius (deg) whose disc holds ``rows`` desi_ls rows at ``density`` per deg^2."""
    return math.sqrt(rows / density / math.pi)


def sim_order_for(rows: int, density: float) -> int:
    """The simulator's pixel order: the default 6 (0.84 deg^2), finer for small skies (>= ~4 pixels).

    The footprint is whole pixels whose centres are in the disc (at least one), so a sky smaller
    than a few pixels would not have ~``rows`` rows.
    """
    area = rows / density
    order = math.ceil(math.log(4 * 41_253 / (12 * area), 4)) if area > 0 else 10
    return min(max(order, 6), 10)


def run_scale(n: int, workdir: Path, master: str, tracking_uri: str, density: float, parents: list[int],
              driver_memory: str, interval: float, save=lambda results: None) -> dict:
    """The three stages at ~n rows; returns {stage: measurement}, passing it to ``save`` after each stage."""
    wd = workdir / f"n{n}"
    shutil.rmtree(wd, ignore_errors=True)
    common = ["--workdir", str(wd), "--master", master, f"spark.driver_memory={driver_memory}",
              "spark.ui_enabled=false", f"cache_dir={workdir / 'cache'}"]
    logs, events = workdir / "logs" / f"n{n}", wd / "events"
    results = {}
    kw = {"executor_parents": parents, "interval": interval}
    r = run_job("simulate_sky.py", [*common, *SKY, f"sim.footprint.radius_deg={radius_for(n, density):.4f}",
                                     f"sim.sim_order={sim_order_for(n, density)}"],
                logs / "simulate.log", events=events / "simulate", **kw)
    cats = {c: rows_of(wd / "catalogs" / c) for c in ("dr16q", "desi_ls")}
    r["rows"] = cats["dr16q"] + cats["desi_ls"] + rows_of(wd / "truth" / "sky")
    results["simulate"] = r
    save(results)
    print(f"  simulate      {r['rows']:>12,d} rows written (desi_ls {cats['desi_ls']:,d}, dr16q {cats['dr16q']:,d})",
          flush=True)
    r = run_job("crossmatch.py", [*common, "'crossmatch.right=[desi_ls]'"], logs / "crossmatch.log",
                events=events / "crossmatch", **kw)
    r.update(rows=cats["dr16q"], right_rows=cats["desi_ls"])
    results["crossmatch"] = r
    save(results)
    print(f"  crossmatch    {r['rows']:>12,d} left x {cats['desi_ls']:,d} right rows", flush=True)
    r = run_job("score_catalog.py", [*common, "--input", "catalogs/desi_ls", "--model", MODEL_NAME,
                                     f"mlflow.tracking_uri={tracking_uri}"], logs / "score.log",
                events=events / "score", **kw)
    r["rows"] = rows_of(wd / "scores" / "desi_ls")
    results["score"] = r
    save(results)
    print(f"  score         {r['rows']:>12,d} rows", flush=True)
    r = {"data_bytes": sum(p.stat().st_size for p in wd.rglob("*") if p.is_file())}
    results["_data"] = r
    return results


# --- report --------------------------------------------------------------------------------------

def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (0 for fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def report(results: dict) -> str:
    """The table over every N measured, and the slopes per stage."""
    header = (f"{'stage':<11} {'rows':>11} {'wall s':>7} {'drv py CPU':>10} {'drv JVM CPU':>11} {'task CPU s':>10} "
              f"{'task s':>8} {'task µs/row':>11} {'CPU µs/row':>10} {'drv py MiB':>10} {'drv JVM MiB':>11} "
              f"{'drv heap MiB':>12} {'to driver kB':>12} {'tasks':>5}")
    lines = [header]
    per_stage: dict[str, list] = {}
    for n in sorted(results, key=int):
        for stage, r in results[n].items():
            if stage.startswith("_"):
                continue
            cpu = r["cpu_s"]
            task_cpu = cpu.get("tasks", 0.0)
            lines.append(
                f"{stage:<11} {r['rows']:>11,d} {r['wall_s']:>7.1f} {cpu.get('driver_python', 0):>10.1f} "
                f"{cpu.get('driver_jvm', 0):>11.1f} {task_cpu:>10.1f} {r.get('task_s', 0):>8.1f} "
                f"{1e6 * r.get('task_s', 0) / r['rows']:>11.2f} {1e6 * task_cpu / r['rows']:>10.2f} "
                f"{r['driver_python_peak_mib']:>10.0f} {r['driver_jvm_peak_mib']:>11.0f} "
                f"{r.get('driver_heap_peak_mib', 0):>12.0f} {r.get('result_bytes', 0) / 1024:>12.1f} "
                f"{r.get('tasks', 0):>5d}")
            per_stage.setdefault(stage, []).append(r)
    lines.append("")
    lines.append("per stage, least squares over the N measured: driver peak RSS vs rows (MiB per 10^6 rows; 0 = flat); "
                 "task time = fixed + marginal x rows (marginal in µs/row), and the marginal rate between "
                 "consecutive N (equal = linear in rows)")
    for stage, rs in per_stage.items():
        xs = [r["rows"] / 1e6 for r in rs]
        py = slope(xs, [r["driver_python_peak_mib"] for r in rs])
        jvm = slope(xs, [r["driver_jvm_peak_mib"] for r in rs])
        heap = slope(xs, [r.get("driver_heap_peak_mib", 0) for r in rs])
        task = [r.get("task_s", 0) for r in rs]
        cpu = [r["cpu_s"].get("tasks", 0) for r in rs]
        b, b_cpu = slope(xs, task), slope(xs, cpu)
        a = round(sum(task) / len(task) - b * sum(xs) / len(xs), 1) + 0.0  # no "-0.0"
        steps = ", ".join(f"{(t2 - t1) / (x2 - x1):.2f}" for x1, x2, t1, t2 in
                          zip(xs, xs[1:], task, task[1:], strict=False) if x2 > x1)
        grew = [rs[-1][k] - rs[0][k] for k in ("driver_python_peak_mib", "driver_jvm_peak_mib")]
        lines.append(f"{stage:<11} driver RSS: Python {py:+7.2f}, JVM {jvm:+7.2f}, JVM heap {heap:+7.2f} MiB/10^6 rows "
                     f"(largest N - smallest N: Python {grew[0]:+.0f}, JVM {grew[1]:+.0f} MiB); "
                     f"task time {a:.1f} s + {b:.2f} µs/row (CPU {b_cpu:.2f} µs/row); marginal µs/row: {steps or '-'}")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------

def start_cluster(workdir: Path, memory: str):
    from photoz_spark.cluster import StandaloneCluster

    cluster = StandaloneCluster(workdir / "cluster", n_workers=2, cores=1, memory=memory).start()
    return cluster, [p.pid for name, p in cluster.procs.items() if name.startswith("worker")]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--workdir", type=Path, default=ROOT / "workdir" / "scale")
    ap.add_argument("--master", default="standalone",
                    help="standalone (a 2-worker x 1-core cluster started here: the driver runs no task), "
                         "local[N], or a master URL")
    ap.add_argument("--driver-memory", default="1g", help="spark.driver_memory of the measured jobs")
    ap.add_argument("--worker-memory", default="3g", help="memory each standalone worker offers")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between process samples")
    ap.add_argument("--keep", action="store_true", help="keep each N's catalogs (default: deleted after)")
    ap.add_argument("--report", action="store_true", help="only print the table of WORKDIR/results.json")
    args = ap.parse_args(argv)
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    if args.report:
        print(report(results))
        return results
    tracking_uri, density = prepare_model(workdir, "local[2]")
    print(f"model {MODEL_NAME} in {tracking_uri}; desi_ls {density:,.0f} rows per deg^2", flush=True)
    cluster, parents = (start_cluster(workdir, args.worker_memory) if args.master == "standalone" else (None, []))
    master = cluster.master_url if cluster else args.master
    try:
        for n in args.rows:
            print(f"N = {n:,d} on {master} ({'standalone' if cluster else args.master})", flush=True)
            t0 = time.perf_counter()

            def save(partial, n=n):  # a stage at a time: a run stopped at 10^7 keeps what it measured
                results.update(json.loads(store.read_text()) if store.is_file() else {})
                results[str(n)] = partial
                store.write_text(json.dumps(results, indent=1))

            got = run_scale(n, workdir, master, tracking_uri, density, parents, args.driver_memory, args.poll, save)
            got["_data"].update(master=args.master, load=os.getloadavg(), finished=time.strftime("%Y-%m-%d %H:%M"),
                                seconds=time.perf_counter() - t0)
            save(got)
            if not args.keep:
                shutil.rmtree(workdir / f"n{n}", ignore_errors=True)
    finally:
        if cluster:
            cluster.stop()
    print(report(results))
    return results


if __name__ == "__main__":
    main()
