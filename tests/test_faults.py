"""Fault injection: jobs killed at chosen points (``PHOTOZ_FAULT``) lose and mix nothing.

The unit half kills a plain-Python commit of three outputs after each of its renames and checks
that ``commit.recover`` leaves every target whole-old or whole-new, all from one run; it also
covers the training lock and the resume fingerprint. The Spark half kills real jobs in a
subprocess (simulate_sky mid-commit, mid-write on the driver and in a write task; training
right after a checkpoint) and reruns them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from photoz_spark import PROJECT_DIR, commit, faults, hats
from photoz_spark.errors import InputError
from photoz_spark.staging import job_staging
from photoz_spark.toy import toy_matched_table
from photoz_spark.train import guard, locks

OUTPUTS = ("a", "b", "c")


def _env(fault: str | None) -> dict:
    from photoz_spark.registry import tracking

    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    env.pop(faults.ENV, None)
    # An earlier in-process job's mlflow.set_tracking_uri leaves MLFLOW_TRACKING_URI in this process's
    # environment; a child would take it for the user's and log to that other test's registry.
    if tracking.set_by_project(env.get("MLFLOW_TRACKING_URI")):
        env.pop("MLFLOW_TRACKING_URI")
    if fault:
        env[faults.ENV] = fault
    return env


def _write_outputs(root: Path, tag: str) -> None:
    """Commit three catalogs whose rows all carry ``tag``, through a job staging folder."""
    import pyarrow as pa

    table = toy_matched_table(5, 0).append_column("tag", pa.array([tag] * 5))
    with job_staging(root, "toy") as stage:
        for name in OUTPUTS:
            hats.write_hats_table(table, stage.output(name, root / "catalogs" / name), order=1,
                                  ra_col="RA", dec_col="DEC", catalog_name=tag)
        stage.commit()


def _commit_in_subprocess(root: Path, tag: str, fault: str | None) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        from pathlib import Path
        from tests.test_faults import _write_outputs
        _write_outputs(Path({str(root)!r}), {tag!r})
    """)
    return subprocess.run([sys.executable, "-c", code], check=False, env=_env(fault), cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=120)


def _tags(root: Path) -> dict:
    return {name: (hats.read_properties(root / "catalogs" / name)["obs_collection"]
                   if (root / "catalogs" / name / "properties").is_file() else None) for name in OUTPUTS}


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for folder in (root, root / "catalogs") if folder.is_dir()
                  for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.unit
@pytest.mark.parametrize("n", range(1, 7))
def test_a_commit_killed_after_any_rename_is_finished_by_recover(tmp_path, n):
    """Three outputs, old ones present: 6 renames; a kill after rename n leaves a mix that
    ``recover`` (run by every job's start) turns into the whole new set."""
    _write_outputs(tmp_path, "old")
    proc = _commit_in_subprocess(tmp_path, "new", f"commit.rename:{n}")
    assert proc.returncode == faults.EXIT_CODE, proc.stderr
    assert "fault injected: commit.rename" in proc.stderr
    assert list(tmp_path.glob(".commit-*.journal")), "the killed commit left its journal"
    done = commit.recover(tmp_path)
    assert any("finished the interrupted commit of a, b, c" in line for line in done), done
    assert _tags(tmp_path) == dict.fromkeys(OUTPUTS, "new")
    assert _leftovers(tmp_path) == []


@pytest.mark.unit
def test_a_commit_whose_staging_vanished_is_rolled_back(tmp_path):
    """Without the staged outputs the commit cannot finish: every target returns to the old one."""
    _write_outputs(tmp_path, "old")
    proc = _commit_in_subprocess(tmp_path, "new", "commit.rename:3")  # a new, b moved aside
    assert proc.returncode == faults.EXIT_CODE, proc.stderr
    for staging in tmp_path.glob(".toy-staging-*"):
        for staged in staging.iterdir():
            if staged.name == "c":
                import shutil
                shutil.rmtree(staged)
    done = commit.recover(tmp_path)
    assert any("rolled back" in line for line in done), done
    assert _tags(tmp_path) == dict.fromkeys(OUTPUTS, "old")
    assert _leftovers(tmp_path) == []


@pytest.mark.unit
def test_a_write_killed_mid_file_leaves_the_old_outputs_and_no_leftovers(tmp_path):
    _write_outputs(tmp_path, "old")
    proc = _commit_in_subprocess(tmp_path, "new", "hats.pixel_file:2")  # inside the second catalog
    assert proc.returncode == faults.EXIT_CODE, proc.stderr
    assert _tags(tmp_path) == dict.fromkeys(OUTPUTS, "old")
    assert _leftovers(tmp_path), "the killed job left its staging folder"
    done = commit.recover(tmp_path)
    assert done and all(line.startswith("removed") for line in done), done
    assert _leftovers(tmp_path) == []
    _write_outputs(tmp_path, "rerun")  # and the rerun succeeds
    assert _tags(tmp_path) == dict.fromkeys(OUTPUTS, "rerun")


@pytest.mark.unit
def test_a_replace_killed_between_its_renames_gets_its_catalog_back(tmp_path):
    """hats' own replace (write_hats_table onto an existing catalog): killed with the old catalog
    moved aside and the new one not yet in place; recover puts the old one back."""
    target = tmp_path / "catalogs" / "a"
    hats.write_hats_table(toy_matched_table(5, 0), target, order=1, ra_col="RA", dec_col="DEC", catalog_name="old")
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from photoz_spark import hats
        target = Path({str(target)!r})
        hats._commit = (lambda real: lambda s, t: (t.rename(t.with_name(hats.unique_name("." + t.name + ".old"))),
                        os._exit(86)))(hats._commit)
        from photoz_spark.toy import toy_matched_table
        hats.write_hats_table(toy_matched_table(5, 1), target, order=1, ra_col="RA", dec_col="DEC", catalog_name="new")
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False, env=_env(None), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 86, proc.stderr
    assert not target.exists()
    done = commit.recover(tmp_path)
    assert f"restored {target}" in done
    assert hats.read_properties(target)["obs_collection"] == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.unit
def test_recover_leaves_live_and_foreign_leftovers_alone(tmp_path):
    (tmp_path / "catalogs").mkdir(parents=True)
    mine = tmp_path / commit.unique_name(".score-staging")           # this (live) process
    foreign = tmp_path / f".score-staging-otherhost-1-{'0' * 32}"      # another host: cannot tell
    dead = tmp_path / f".score-staging-{commit.HOST}-{_dead_pid()}-{'1' * 32}"
    for folder in (mine, foreign, dead):
        folder.mkdir()
    assert commit.recover(tmp_path) == [f"removed {dead}"]
    assert mine.is_dir() and foreign.is_dir() and not dead.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.unit
def test_unknown_fault_point_is_refused(monkeypatch):
    monkeypatch.setenv(faults.ENV, "commit.renmae")
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.point("commit.rename")


# --- the qp export (no Spark): journaled like every job's outputs ------------------------------

@pytest.fixture
def exported(tmp_path):
    """A score output ``scores/toy`` and a first export of its first 100 rows at ``qp/toy``."""
    from photoz_spark.jobs import export_qp
    from tests.test_export_qp import toy_model, write_scores

    write_scores(toy_model(tmp_path / "model"), tmp_path / "scores" / "toy")
    export_qp.main(["--workdir", str(tmp_path), "--input", "scores/toy", "--limit", "100"])
    return tmp_path


def _export_job(workdir: Path, limit: int, fault: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_DIR / "jobs" / "export_qp.py"), "--workdir", str(workdir),
                           "--input", "scores/toy", "--limit", str(limit)],
                          check=False, env=_env(fault), capture_output=True, text=True, timeout=300)


def _export_rows(workdir: Path) -> int | None:
    manifest = workdir / "qp" / "toy" / "export.json"
    return json.loads(manifest.read_text())["rows"] if manifest.is_file() else None


def _hidden(workdir: Path) -> list[str]:
    return sorted(p.name for folder in (workdir, workdir / "qp") for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.unit
def test_an_export_killed_mid_commit_is_finished_and_a_rerun_replaces_it(exported, capsys):
    """Killed between moving the old export aside and putting the new one in place: no export at
    its path, a journal left; the next job's start finishes the commit, and a rerun replaces it."""
    from photoz_spark.jobs import export_qp

    proc = _export_job(exported, 200, "commit.rename:1")
    assert proc.returncode == faults.EXIT_CODE, proc.stderr[-3000:]
    assert _export_rows(exported) is None and list(exported.glob(".commit-export_qp-*.journal"))
    done = commit.recover(exported)
    assert done[0] == "finished the interrupted commit of toy", done
    # and what the killed job left: its (emptied) staging folder and its output's lock
    assert sorted(line.split(" ")[0] for line in done[1:]) == ["removed", "removed"], done
    assert f"removed {exported / 'qp' / '.toy.lock'}" in done
    assert _export_rows(exported) == 200 and _hidden(exported) == []
    capsys.readouterr()
    summary = export_qp.main(["--workdir", str(exported), "--input", "scores/toy", "--limit", "300"])
    assert summary["rows"] == 300 and _export_rows(exported) == 300
    assert [p.name for p in (exported / "qp").iterdir()] == ["toy"], "a rerun replaces, never duplicates"
    assert _hidden(exported) == []


@pytest.mark.unit
def test_an_export_killed_mid_write_keeps_the_old_one_and_the_next_job_cleans_up(exported, capsys):
    from photoz_spark.jobs import export_qp

    proc = _export_job(exported, 0, "export.file:2")  # every row; killed after its second pixel file
    assert proc.returncode == faults.EXIT_CODE, proc.stderr[-3000:]
    assert _export_rows(exported) == 100, "the earlier export is intact"
    assert [h for h in _hidden(exported) if h.startswith(".export_qp-staging-")], "the killed job left its staging"
    capsys.readouterr()
    summary = export_qp.main(["--workdir", str(exported), "--input", "scores/toy"])
    assert "recovered: removed " in capsys.readouterr().out
    assert summary["rows"] == _export_rows(exported) == 1500 and _hidden(exported) == []


@pytest.mark.unit
def test_a_report_replaces_only_an_earlier_report(tmp_path):
    """evaluate's and ablation's reports go through the same journaled commit; a folder that is not
    a report is refused before any work and kept."""
    from photoz_spark.errors import OutputExists
    from photoz_spark.evaluate.report import staged_report

    for text in ("first", "second"):
        with staged_report(tmp_path / "reports", "m-v1", "report.md", "evaluate") as staged:
            (staged / "report.md").write_text(text)
    assert (tmp_path / "reports" / "m-v1" / "report.md").read_text() == "second"
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["m-v1"] and _leftovers(tmp_path) == []
    (tmp_path / "reports" / "mine").mkdir()
    (tmp_path / "reports" / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputExists, match="is not an earlier report"), \
            staged_report(tmp_path / "reports", "mine", "report.md", "evaluate"):
        raise AssertionError("refused before any work")
    assert (tmp_path / "reports" / "mine" / "notes.txt").read_text() == "keep"


# --- one writer per output: a second job writing the same output is refused --------------------

def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate()


@pytest.mark.unit
def test_two_exports_to_one_output_do_not_mix(exported, capsys):
    """A real export job paused after its first file holds qp/toy; a second export to it stops in
    one line naming the first's pid and writes nothing; once the first is killed, the next run
    takes its lock over and replaces the export whole."""
    from photoz_spark.jobs import export_qp

    ready = exported / "first-file-written"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from photoz_spark.export import qp
        from photoz_spark.jobs import export_qp
        write = qp._write
        def paused(ensemble, path):
            write(ensemble, path)
            Path({str(ready)!r}).touch()
            time.sleep(120)
        qp._write = paused
        export_qp.main(["--workdir", {str(exported)!r}, "--input", "scores/toy"])
    """)
    first = subprocess.Popen([sys.executable, "-c", code], env=_env(None), cwd=PROJECT_DIR,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, first)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            export_qp.main(["--workdir", str(exported), "--input", "scores/toy", "--limit", "200"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert f"qp/toy is being written by export_qp (pid {first.pid} on this host" in err, err
        assert _export_rows(exported) == 100, "neither job's files reached the export"
    finally:
        _kill(first)
    ready.unlink()
    summary = export_qp.main(["--workdir", str(exported), "--input", "scores/toy", "--limit", "300"])
    assert f"recovered: removed {exported / 'qp' / '.toy.lock'}" in capsys.readouterr().out
    assert summary["rows"] == _export_rows(exported) == 300 and _hidden(exported) == []


def test_a_second_crossmatch_to_one_run_is_refused_naming_the_holder(spark, tmp_path, capsys):
    """Two crossmatches to matched/dr16q: the second (a real job) stops in one line naming the
    first's pid (a real process holding the output through the jobs' own staging) and writes
    nothing; after the holder dies its lock is taken over."""
    from photoz_spark.jobs import crossmatch
    from tests.test_empty_inputs import _catalogs

    _catalogs(tmp_path, 40)
    ready = tmp_path / "holding"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from photoz_spark.staging import job_staging
        root = Path({str(tmp_path)!r})
        with job_staging(root, "crossmatch") as stage:
            stage.output("dr16q", root / "matched" / "dr16q")
            Path({str(ready)!r}).touch()
            time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], env=_env(None), cwd=PROJECT_DIR,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    argv = ["--workdir", str(tmp_path), "crossmatch.right=[sdss,desi_ls]"]
    try:
        _wait_for(ready, holder)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            crossmatch.main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert f"matched/dr16q is being written by crossmatch (pid {holder.pid} on this host" in err, err
        assert not (tmp_path / "matched" / "dr16q").exists()
    finally:
        _kill(holder)
    assert crossmatch.main(argv)["rows_out"] == 40  # the dead holder's lock is taken over
    assert not [p for p in (tmp_path / "matched").iterdir() if p.name.startswith(".")]


# --- one training per model name, resume only what was started --------------------------------

@pytest.mark.unit
def test_a_second_training_of_one_model_name_is_refused_before_any_work(tmp_path, capsys):
    from photoz_spark.jobs import train as train_job

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "train" / "busy" / locks.LOCK_FILE
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"pid": holder.pid, "host": commit.HOST, "started": "2026-12-03T08:00:00+00:00"}))
        with pytest.raises(SystemExit) as exit_info:  # no features exist: the lock is checked first
            train_job.main(["--workdir", str(tmp_path), "mlflow.model_name=busy", "--master", "local[1]"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert f"model 'busy' is already being trained (pid {holder.pid} on this host" in err
        assert lock.is_file()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.unit
def test_a_dead_trainings_lock_is_taken_over_and_released(tmp_path):
    out = tmp_path / "train" / "m"
    out.mkdir(parents=True)
    (out / locks.LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": commit.HOST, "started": "x"}))
    with locks.train_lock(out, "m") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(locks.TrainingInProgress):  # held (by this process): a second one waits its turn
            locks.acquire(out, "m")
    assert not lock.exists()


@pytest.mark.unit
def test_resume_with_changed_settings_is_refused_naming_them(tmp_path):
    cfg = {"lr": 0.001, "batch_size": 64, "max_epochs": 3, "schedule": "step", "resume": True, "num_processes": 2}
    model = {"hidden1": 16, "n_steps": 9}
    layout, stats, counts = {"band_set": "sdss_wise9", "bands": ["sdss_u"]}, {"mean": [[1.0]]}, {"train": 10}
    first = guard.fingerprint(cfg, model, layout, stats, counts)
    guard.check_resume(tmp_path, first, resuming=False)
    # how long, on how many ranks: may change
    same = guard.fingerprint({**cfg, "max_epochs": 40, "num_processes": 1}, model, layout, stats, counts)
    guard.check_resume(tmp_path, same, resuming=True)
    changed = guard.fingerprint({**cfg, "lr": 0.01}, {**model, "hidden1": 32}, layout, {"mean": [[2.0]]}, counts)
    with pytest.raises(InputError) as info:
        guard.check_resume(tmp_path, changed, resuming=True)
    message = str(info.value)
    assert "train.lr 0.001 -> 0.01" in message and "model.hidden1 16 -> 32" in message
    assert "features " in message and "train.resume=false" in message and "\n" not in message
    guard.check_resume(tmp_path, changed, resuming=False)  # starting fresh records the new settings
    assert json.loads((tmp_path / guard.FINGERPRINT_FILE).read_text()) == changed
    cosine = {**cfg, "schedule": "cosine"}  # the cosine schedule's rate depends on max_epochs
    assert guard.changed_keys(guard.fingerprint(cosine, model, layout, stats, counts),
                              guard.fingerprint({**cosine, "max_epochs": 9}, model, layout, stats, counts)) \
        == ["train.max_epochs 3 -> 9"]


# --- real jobs, killed in a subprocess ----------------------------------------------------------

SKY = ["sim.footprint.radius_deg=0.3", "sim.quasars.density_deg2=600", "sim.field.galaxy_density_deg2=8000",
       "sim.field.star_density_deg2=1000"]
SKY_OUTPUTS = ("catalogs/dr16q", "catalogs/sdss", "catalogs/desi_ls", "truth/sky")
SMALL_MODEL = ["model.hidden1=16", "model.hidden2=8", "model.dense=16", "model.n_components=3",
               "train.recipe=paper",  # the settings the resume-refusal test names (train.lr 0.001)
               "train.batch_size=64", "train.band_set=sdss_wise9", "train.num_processes=1",
               "train.max_epochs=4", "train.patience=100", "mlflow.model_name=faulty"]


def _job(script: str, workdir: Path, args: list[str], fault: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_DIR / "jobs" / f"{script}.py"), "--workdir", str(workdir),
                           "--master", "local[2]", "spark.ui_enabled=false", *args],
                          check=False, env=_env(fault), capture_output=True, text=True, timeout=600)


def _seeds(workdir: Path) -> dict:
    return {o: (hats.read_properties(workdir / o)["photoz_sim_seed"] if (workdir / o / "properties").is_file()
                else None) for o in SKY_OUTPUTS}


@pytest.fixture(scope="module")
def sky(spark, tmp_path_factory):
    from photoz_spark.jobs import simulate_sky

    workdir = tmp_path_factory.mktemp("faulty-sky")
    simulate_sky.main(["--workdir", str(workdir), *SKY, "sim.seed=1"])
    return workdir


@pytest.mark.slow
def test_simulate_killed_mid_commit_is_finished_by_the_next_job(sky, capsys):
    """Killed after its third rename (dr16q replaced, sdss moved aside): the sky on disk is two
    seeds and a hole; the next job start, even one refused, completes the new sky."""
    from photoz_spark.jobs import simulate_sky

    proc = _job("simulate_sky", sky, [*SKY, "sim.seed=2"], "commit.rename:3")
    assert proc.returncode == faults.EXIT_CODE, proc.stderr[-3000:]
    assert _seeds(sky) == {"catalogs/dr16q": "2", "catalogs/sdss": None, "catalogs/desi_ls": "1", "truth/sky": "1"}
    with pytest.raises(SystemExit):
        simulate_sky.main(["--workdir", str(sky), "sim.footprint.radius_deg=-1"])
    assert "recovered: finished the interrupted commit of dr16q, sdss, desi_ls, sky" in capsys.readouterr().out
    assert set(_seeds(sky).values()) == {"2"}
    assert not list(sky.glob(".simulate-staging-*")) and not list(sky.glob(".commit-*"))


@pytest.mark.slow
def test_simulate_killed_mid_write_keeps_the_old_sky_and_the_rerun_succeeds(sky):
    from photoz_spark.jobs import simulate_sky

    before = _seeds(sky)
    proc = _job("simulate_sky", sky, [*SKY, "sim.seed=3"], "hats.catalog:2")  # second catalog half written
    assert proc.returncode == faults.EXIT_CODE, proc.stderr[-3000:]
    assert _seeds(sky) == before and list(sky.glob(".simulate-staging-*"))
    simulate_sky.main(["--workdir", str(sky), *SKY, "sim.seed=3"])
    assert set(_seeds(sky).values()) == {"3"}
    assert not list(sky.glob(".simulate-staging-*"))
    assert not [p for p in (sky / "catalogs").iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def features(spark, tmp_path_factory):
    from photoz_spark.jobs import build_features

    workdir = tmp_path_factory.mktemp("faulty-train")
    hats.write_hats_table(toy_matched_table(1500, 0), workdir / "matched" / "dr16q", order=5, ra_col="RA",
                          dec_col="DEC", catalog_name="dr16q")
    build_features.main(["--workdir", str(workdir), "--band-set", "sdss_wise9"])
    return workdir


@pytest.mark.slow
def test_training_killed_after_a_checkpoint_resumes_only_with_its_settings(features, capsys):
    from photoz_spark.jobs import train as train_job

    proc = _job("train", features, SMALL_MODEL, "train.checkpoint:2")
    assert proc.returncode != 0 and "fault injected: train.checkpoint" in proc.stdout + proc.stderr
    out = features / "train" / "faulty"
    assert (out / "checkpoint.pt").is_file() and (out / guard.FINGERPRINT_FILE).is_file()
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(["--workdir", str(features), *SMALL_MODEL, "train.lr=0.01", "model.hidden1=32"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "train.lr 0.001 -> 0.01" in err and "model.hidden1 16 -> 32" in err and "train.resume=false" in err
    resumed = train_job.main(["--workdir", str(features), *SMALL_MODEL])
    assert resumed["resumed"] and resumed["distributed"]["epochs_run"] == 4
    assert resumed["promotion"]["version"] == 1 and not out.exists()
