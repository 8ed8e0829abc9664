"""Deep ensembles: one mixture equal to the members' average, saved and loaded as one model,
train.ensemble=1 unchanged, and a train job with train.ensemble=2 that registers a scorable model."""

import json

import numpy as np
import pytest
import torch
from test_train_job import (
    SMALL_MODEL,
    matched_from_redshift,
    workdir,  # noqa: F401 - the module fixture: features of 3,000 toy objects
)

from photoz_spark.bands import load_bands
from photoz_spark.errors import InputError
from photoz_spark.jobs import train as train_job
from photoz_spark.model import BiLSTMMDN, ModelConfig, mdn, mixture
from photoz_spark.model.ensemble import EnsembleMDN, build_network

REG = load_bands()
CONFIG = ModelConfig(n_steps=9, hidden1=8, hidden2=4, dense=8, n_components=3)


def members(n: int, config: ModelConfig = CONFIG) -> list[BiLSTMMDN]:
    """n networks with different random weights (and batch-norm statistics), in eval mode."""
    nets = []
    for seed in range(n):
        torch.manual_seed(seed)
        net = BiLSTMMDN(config)
        for norm in (net.norm1, net.norm2):  # non-trivial inference statistics, member-specific
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
        nets.append(net.eval())
    return nets


def inputs(n: int = 64, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    observed = torch.rand(n, CONFIG.n_steps, generator=g) > 0.2
    features = torch.randn(n, CONFIG.n_steps * 2, generator=g)
    return features * observed.repeat_interleave(2, dim=1), observed


@pytest.mark.unit
def test_ensemble_density_cdf_and_mean_are_the_members_average():
    nets = members(3)
    ensemble = EnsembleMDN.from_members(nets).eval()
    x, m = inputs()
    with torch.no_grad():
        w, mu, sigma = (t.double() for t in mixture(*ensemble(x, m)))
        parts = [[t.double() for t in mixture(*net(x, m))] for net in nets]
    assert w.shape == (64, 9) and ensemble.config.n_components == 9 and ensemble.member_config.n_components == 3
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-6)
    for i, (wi, mui, si) in enumerate(parts):  # member i's components, its weights / M
        np.testing.assert_allclose(w[:, 3 * i:3 * i + 3].numpy(), wi.numpy() / 3, rtol=1e-5, atol=1e-7)
        assert torch.equal(mu[:, 3 * i:3 * i + 3], mui) and torch.equal(sigma[:, 3 * i:3 * i + 3], si)
    grid = torch.linspace(-2.0, 8.0, 801, dtype=torch.float64)
    avg_pdf = sum(mdn.pdf_grid(*p, grid) for p in parts) / 3
    avg_cdf = sum(mdn.cdf_grid(*p, grid) for p in parts) / 3
    np.testing.assert_allclose(mdn.pdf_grid(w, mu, sigma, grid).numpy(), avg_pdf.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mdn.cdf_grid(w, mu, sigma, grid).numpy(), avg_cdf.numpy(), atol=1e-6)
    np.testing.assert_allclose(mdn.mean(w, mu).numpy(), (sum(mdn.mean(*p[:2]) for p in parts) / 3).numpy(),
                               rtol=1e-5, atol=1e-6)
    # CRPS is convex in the CDF: the ensemble's is at most the members' average, object by object,
    # and equals the integral of (average CDF - step)^2 on a fine grid.
    y = torch.full((64,), 1.3, dtype=torch.float64)
    crps = mdn.crps(w, mu, sigma, y)
    assert (crps <= sum(mdn.crps(*p, y) for p in parts) / 3 + 1e-9).all()
    fine = torch.linspace(-30.0, 30.0, 60001, dtype=torch.float64)
    step = (fine[None, :] >= y[:, None]).double()
    numeric = torch.trapezoid((mdn.cdf_grid(w, mu, sigma, fine) - step) ** 2, fine, dim=-1)
    np.testing.assert_allclose(crps.numpy(), numeric.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.unit
def test_members_must_share_a_configuration():
    with pytest.raises(ValueError, match="share one model configuration"):
        EnsembleMDN.from_members([BiLSTMMDN(CONFIG), BiLSTMMDN(ModelConfig(n_steps=9, hidden1=4))])
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleMDN(CONFIG, 0)


def _save(directory, state_dict, raw, observed, band_set, **extra):
    from photoz_spark.features.stats import compute_stats
    from photoz_spark.registry.artifact import save_model_files

    layout = {"band_set": band_set.name, "bands": band_set.names, "n_steps": len(band_set), "n_channels": 2}
    save_model_files(directory, state_dict, {"model_config": CONFIG.to_dict(), "layout": layout,
                                             "stats": compute_stats(raw, observed, band_set), **extra}, REG)


@pytest.mark.unit
def test_saved_ensemble_loads_and_scores_as_the_members_average(tmp_path):
    """One weights.pt + model.json "ensemble": 3 loads as an EnsembleMDN whose scoring output is
    the members' mixture, from raw photometry; each member saved alone scores its own part."""
    from photoz_spark.features.sequencing import sequence
    from photoz_spark.registry.artifact import META_FILE, WEIGHTS_FILE, PhotozModel
    from photoz_spark.scoring.kernel import score_batch
    from photoz_spark.toy import toy_matched_table

    band_set = REG.band_set("sdss_wise9")
    table = toy_matched_table(200, 3)
    raw, observed, _ = sequence(table, band_set, REG)
    nets = members(3)
    _save(tmp_path / "ens", EnsembleMDN.from_members(nets).state_dict(), raw, observed, band_set, ensemble=3)
    for i, net in enumerate(nets):
        _save(tmp_path / f"m{i}", net.state_dict(), raw, observed, band_set)
    model = PhotozModel(tmp_path / "ens")
    assert isinstance(model.network, EnsembleMDN) and json.loads((tmp_path / "ens" / META_FILE).read_text())["ensemble"] == 3
    assert set(torch.load(tmp_path / "ens" / WEIGHTS_FILE, weights_only=True)) >= {"members.2.head.weight"}
    singles = [PhotozModel(tmp_path / f"m{i}") for i in range(3)]
    assert all(type(s.network) is BiLSTMMDN for s in singles)  # no "ensemble" key: one network, as before
    w, mu, sigma = model.mixture_of(raw, observed)
    grid = torch.linspace(0.0, 6.0, 601)
    avg = sum(mdn.pdf_grid(*s.mixture_of(raw, observed), grid) for s in singles) / 3
    np.testing.assert_allclose(mdn.pdf_grid(w, mu, sigma, grid).numpy(), avg.numpy(), rtol=1e-4, atol=1e-5)

    out = score_batch(model, table, keep=["id"] if "id" in table.column_names else [])
    assert out.num_rows == 200
    assert {len(v) for v in out.column("mixmod_weights").to_pylist()} == {9}
    member_means = np.mean([score_batch(s, table).column("z_phot_mean").to_numpy() for s in singles], axis=0)
    np.testing.assert_allclose(out.column("z_phot_mean").to_numpy(), member_means, rtol=1e-5, atol=1e-5)
    pred = model.predict_table(table)
    assert np.isfinite(pred.z_phot_mean).all() and (pred.z_phot_std > 0).all()


@pytest.mark.unit
def test_ensemble_metadata_must_fit_the_weights(tmp_path):
    from photoz_spark.features.sequencing import sequence
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.toy import toy_matched_table

    band_set = REG.band_set("sdss_wise9")
    raw, observed, _ = sequence(toy_matched_table(50, 3), band_set, REG)
    _save(tmp_path / "three", EnsembleMDN.from_members(members(3)).state_dict(), raw, observed, band_set, ensemble=2)
    with pytest.raises(InputError, match="does not fit the network"):
        PhotozModel(tmp_path / "three")
    _save(tmp_path / "bad", BiLSTMMDN(CONFIG).state_dict(), raw, observed, band_set, ensemble="two")
    with pytest.raises(InputError, match="'ensemble' must be a whole number of members >= 1, got 'two'"):
        PhotozModel(tmp_path / "bad")


@pytest.mark.unit
def test_ensemble_of_one_is_todays_network(tmp_path):
    from photoz_spark.config import load_config
    from photoz_spark.train.ensemble import has_progress

    net = build_network(CONFIG, 1)
    assert type(net) is BiLSTMMDN and set(net.state_dict()) == set(BiLSTMMDN(CONFIG).state_dict())
    assert load_config("train.yaml")["train"]["ensemble"] == 1
    # a single model resumes from its checkpoint only; an ensemble from its members' progress
    (tmp_path / "member-0").mkdir()
    (tmp_path / "member-0" / "checkpoint.pt").write_bytes(b"")
    assert not has_progress(tmp_path, 1) and has_progress(tmp_path, 2)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert has_progress(tmp_path, 1)


@pytest.mark.unit
def test_finished_member_is_skipped_on_resume(tmp_path, monkeypatch):
    from photoz_spark.train import ensemble as ens
    from photoz_spark.train import run

    calls = []

    def fake_run(spark, features_dir, folder, cfg, mcfg, feed=None, tracking=None):
        calls.append((folder.name, cfg["seed"]))
        (folder / "best.pt").write_bytes(b"weights")
        (folder / "history.jsonl").write_text(json.dumps({"epoch": 0, "train_loss": 1.0, "val_loss": 1.0}) + "\n")
        return {"best_epoch": 0, "best_val_loss": 1.0, "epochs_run": 1, "stopped_early": False,
                "use_gpu": False, "local_mode": True, "num_processes": 2}

    monkeypatch.setattr(run, "run_distributed", fake_run)
    cfg = {"seed": 10, "ensemble": 3, "resume": True}
    first = [ens.train_member(None, tmp_path, tmp_path, cfg, {}, i) for i in range(2)]
    assert calls == [("member-0", 10), ("member-1", 11)] and [r["seed"] for r in first] == [10, 11]
    again = [ens.train_member(None, tmp_path, tmp_path, cfg, {}, i) for i in range(3)]
    assert calls[2:] == [("member-2", 12)] and again[:2] == first  # members 0 and 1 kept
    ens.train_member(None, tmp_path, tmp_path, {**cfg, "resume": False}, {}, 0)
    assert calls[3:] == [("member-0", 10)]  # train.resume=false retrains
    combined = ens.combined_result(again)
    assert combined["epochs_run"] == 1 and not combined["stopped_early"] and len(combined["members"]) == 3


def test_train_job_registers_one_ensemble_that_scores(workdir, capsys):  # noqa: F811
    import mlflow

    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model
    from photoz_spark.scoring.kernel import score_batch

    out = train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "train.max_epochs=1", "train.lr=0.01",
                          "train.ensemble=2", "mlflow.model_name=ensemble"])
    printed = capsys.readouterr().out
    assert out["promotion"]["version"] == 1 and "ensemble      2 members" in printed
    # auto on 2 ranks, 2 cores: both members at once, one rank each (train.ensemble_parallel)
    assert "ensemble members [0, 1] of 2 in parallel: 1 rank(s) each" in printed
    parts = out["distributed"]["members"]
    assert [p["seed"] for p in parts] == [0, 1] and out["epochs"] == 2
    assert [p["num_processes"] for p in parts] == [1, 1]
    assert parts[0]["test_crps"] != parts[1]["test_crps"]  # different seeds: different networks
    m = out["metrics"]
    # CRPS is convex in the PDF: the mixture's mean CRPS is at most the members' average
    assert 0 < m["test_crps"] <= np.mean([p["test_crps"] for p in parts]) + 1e-6
    assert {"test_sigma_nmad", "test_f_out", "test_pit_ks", "val_crps"} <= set(m)

    mlflow.set_tracking_uri(out["tracking_uri"])
    client = mlflow.tracking.MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.params["train.ensemble"] == "2"
    assert run.data.metrics["member1_test_crps"] == pytest.approx(parts[1]["test_crps"])
    assert len(client.get_metric_history(out["run_id"], "member0_val_nll")) == 1

    model = PhotozModel(download_model("models:/ensemble/1"))
    assert model.meta["ensemble"] == 2 and isinstance(model.network, EnsembleMDN)
    assert model.meta["metrics"]["test_crps"] == pytest.approx(m["test_crps"])
    table = matched_from_redshift(150, 9)
    scored = score_batch(model, table)
    assert {len(v) for v in scored.column("mixmod_means").to_pylist()} == {2 * 3}
    zs = scored.column("z_phot_mean").to_numpy()
    assert np.isfinite(zs).all()
    # the mixture mean is the average of the two members' means
    from photoz_spark.features.sequencing import sequence

    raw, observed, _ = sequence(table, model.band_set, model.bands)
    feats, mask = model.standardised(raw, observed)
    with torch.no_grad():
        each = [mdn.mean(*mixture(*net(feats, mask))[:2]).numpy() for net in model.network.members]
    np.testing.assert_allclose(zs, np.mean(each, axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.unit
def test_parallel_members_only_where_the_ranks_split_evenly():
    from photoz_spark.config import ConfigError
    from photoz_spark.train.ensemble import parallel_members

    assert parallel_members("auto", 2, 2, False, "arrow", 2) and parallel_members("auto", 2, 4, True, "arrow", 1)
    assert not parallel_members("auto", 2, 4, False, "arrow", 2)  # 4 CPU ranks on 2 cores: one after another
    assert not parallel_members("auto", 2, 3, True, "arrow", 8)   # 3 ranks do not split into 2 groups
    assert not parallel_members("auto", 3, 2, True, "arrow", 8)   # fewer ranks than members
    assert not parallel_members("auto", 2, 2, False, "petastorm", 2)
    assert not parallel_members(False, 2, 2, True, "arrow", 8) and not parallel_members(True, 1, 2, True, "arrow", 8)
    assert parallel_members(True, 2, 4, False, "arrow", 1)  # forced: even if the cores are oversubscribed
    with pytest.raises(ConfigError, match="3 ranks .* do not split into 2 equal groups"):
        parallel_members(True, 2, 3, False, "arrow", 8)
    with pytest.raises(ConfigError, match="petastorm feeds one network's ranks only"):
        parallel_members(True, 2, 2, False, "petastorm", 8)


def test_impossible_parallel_ensemble_refused_in_one_line(workdir, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "train.ensemble=3", "train.ensemble_parallel=true",
                        "mlflow.model_name=impossible"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "2 ranks (train.num_processes) do not split into 3 equal groups" in err
    assert "Traceback" not in err


def _members_of(uri: str, version_uri: str) -> list:
    import mlflow

    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model

    mlflow.set_tracking_uri(uri)
    return PhotozModel(download_model(version_uri)).network.members


def test_parallel_members_equal_sequential_members(workdir, capsys):  # noqa: F811
    """Member i trained in a group of one rank (2 ranks, 2 members, one launch) is the network the
    sequential path trains for seed i on one rank: same initial weights, same shard, same batches.

    Only the ranks' torch thread counts differ (1 per rank of 2 vs 2 for a lone rank: float sums in
    another order, ~1e-7 after an epoch); on this tiny, noisy problem later epochs amplify that
    chaotically (measured: val NLL 2.76 vs 3.02 at epoch 2), so one epoch is compared."""
    common = [*SMALL_MODEL, "train.max_epochs=1", "train.ensemble=2", "train.seed=7"]
    par = train_job.main(["--workdir", str(workdir), *common, "train.ensemble_parallel=true",
                          "mlflow.model_name=ens-par"])
    seq = train_job.main(["--workdir", str(workdir), *common, "train.ensemble_parallel=false",
                          "train.num_processes=1", "mlflow.model_name=ens-seq"])
    printed = capsys.readouterr().out
    assert "in parallel: 1 rank(s) each" in printed and "ensemble member 1 of 2: seed 8" in printed
    p_parts, s_parts = par["distributed"]["members"], seq["distributed"]["members"]
    assert [p["seed"] for p in p_parts] == [s["seed"] for s in s_parts] == [7, 8]
    for p, s in zip(p_parts, s_parts, strict=True):
        assert p["epochs_run"] == s["epochs_run"] == 1 and p["num_processes"] == s["num_processes"] == 1
        assert p["best_val_loss"] == pytest.approx(s["best_val_loss"], rel=1e-5)
        assert p["test_crps"] == pytest.approx(s["test_crps"], rel=1e-5)
    assert p_parts[0]["best_val_loss"] != pytest.approx(p_parts[1]["best_val_loss"], rel=1e-3)  # members differ
    assert par["metrics"]["test_crps"] == pytest.approx(seq["metrics"]["test_crps"], rel=1e-5)
    p_nets = _members_of(par["tracking_uri"], "models:/ens-par/1")
    s_nets = _members_of(seq["tracking_uri"], "models:/ens-seq/1")
    for p_net, s_net in zip(p_nets, s_nets, strict=True):
        for (name, a), b in zip(p_net.state_dict().items(), s_net.state_dict().values(), strict=True):
            np.testing.assert_allclose(a.double().numpy(), b.double().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    first_weights = [next(iter(net.state_dict().values())) for net in p_nets]
    assert not torch.allclose(*first_weights)  # the two seeds' members are different networks


def test_killed_parallel_ensemble_resumes(workdir):  # noqa: F811
    import os
    import signal
    import subprocess
    import sys
    import time

    from photoz_spark import PROJECT_DIR

    # the paper recipe's step schedule lets the resumed run end sooner (a cosine's rate depends on max_epochs)
    common = [*SMALL_MODEL, "train.recipe=paper", "train.patience=100", "train.ensemble=2",
              "train.ensemble_parallel=true", "mlflow.model_name=ens-resumable"]
    proc = subprocess.Popen([sys.executable, str(PROJECT_DIR / "jobs" / "train.py"), "--workdir", str(workdir),
                             *common, "train.max_epochs=40"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    histories = [workdir / "train" / "ens-resumable" / f"member-{i}" / "history.jsonl" for i in range(2)]

    def epochs(path):
        return len(path.read_text().splitlines()) if path.is_file() else 0

    deadline = time.time() + 300
    while time.time() < deadline and min(epochs(h) for h in histories) < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and both members' ranks, mid-training
    proc.wait()
    done = [epochs(h) for h in histories]
    assert all(2 <= n < 40 for n in done)
    # the members start apart, so one may be several epochs ahead at the kill: end both a few epochs further
    target = max(done) + 3
    resumed = train_job.main(["--workdir", str(workdir), *common, f"train.max_epochs={target}"])
    assert resumed["resumed"] and resumed["promotion"]["version"] == 1
    parts = resumed["distributed"]["members"]
    assert [p["epochs_run"] for p in parts] == [target, target] and resumed["epochs"] == 2 * target
    assert parts[0]["test_crps"] != parts[1]["test_crps"]
