"""train.backend=petastorm: trains, logs and registers like arrow on the petastorm stack, or refuses in one line.

The petastorm tests run only where petastorm imports (``make test-petastorm``, .venv-petastorm);
the main suite skips them and checks the one-line error instead.
"""

import pickle
import sys

import numpy as np
import pytest
import test_train_job
import torch
from test_train_job import SMALL_MODEL, matched_from_redshift, train_job

from photoz_spark.config import ConfigError
from photoz_spark.train.feeding import ArrowFeed, PetastormFeed, import_petastorm

workdir = test_train_job.workdir  # the fixture (this module gets its own): tiny sdss_wise9 features
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning"),  # petastorm 0.12 on pyarrow's legacy API
              pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning")]


def _importable() -> bool:
    try:
        import_petastorm()
    except ConfigError:
        return False
    return True


HAVE_PETASTORM = _importable()
needs_petastorm = pytest.mark.skipif(not HAVE_PETASTORM, reason="petastorm is not importable: make test-petastorm")


def test_petastorm_backend_without_petastorm_is_a_one_line_error(spark, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "petastorm"] or ["petastorm"]:
        monkeypatch.setitem(sys.modules, name, None)  # on the petastorm stack: hide it (no-op elsewhere)
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(["--workdir", str(tmp_path), *SMALL_MODEL, "train.backend=petastorm"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: train.backend=petastorm needs petastorm")
    assert "pip install -c .ci/petastorm-constraints.txt -e '.[petastorm]'" in lines[0]
    assert not (tmp_path / "train").exists() and not (tmp_path / "mlflow").exists(), "refused before training"


@pytest.fixture(scope="module")
def feed(spark, workdir, tmp_path_factory):
    feed = PetastormFeed.create(spark, workdir / "features" / "sdss_wise9", tmp_path_factory.mktemp("cache"), 2)
    yield feed
    feed.delete()


@needs_petastorm
def test_rank_shards_are_even_disjoint_and_standardised_like_arrow(feed, workdir):
    arrow = ArrowFeed(workdir / "features" / "sdss_wise9")
    feed = pickle.loads(pickle.dumps(feed))  # as TorchDistributor hands it to the ranks
    n_train, batch = arrow.count("train"), 64
    seen = {}
    for rank in (0, 1):
        z = []
        for epoch in range(2):  # the stream goes on across epochs, a short shard wraps around
            batches = list(feed.train_batches(epoch, rank, 2, batch, seed=0))
            assert len(batches) == (n_train // 2) // batch
            for features, observed, zb in batches:
                assert features.shape == (batch, 9 * 2) and features.dtype == torch.float32
                assert observed.shape == (batch, 9) and observed.dtype == torch.bool
                assert zb.shape == (batch,) and zb.dtype == torch.float32 and np.isfinite(features.numpy()).all()
                z.append(zb.numpy())
        feed.close()
        seen[rank] = set(np.concatenate(z).tolist())
    assert not seen[0] & seen[1], "cur_shard/shard_count: the ranks read disjoint row groups"

    # Validation: equal slices of the whole split, standardised with the same numbers as ArrowFeed.
    whole = arrow.load("validation")
    halves = [feed.eval_data("validation", rank, 2) for rank in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == len(whole) // 2
    assert not set(halves[0].z.tolist()) & set(halves[1].z.tolist())
    mine = feed.eval_data("validation")
    a, b = np.argsort(whole.z.numpy()), np.argsort(mine.z.numpy())
    np.testing.assert_array_equal(mine.z.numpy()[b], whole.z.numpy()[a])
    np.testing.assert_array_equal(mine.observed.numpy()[b], whole.observed.numpy()[a])
    np.testing.assert_allclose(mine.features.numpy()[b], whole.features.numpy()[a], rtol=1e-6, atol=1e-6)


@needs_petastorm
def test_petastorm_trains_logs_and_registers_like_arrow(workdir):
    import mlflow
    from mlflow.tracking import MlflowClient

    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model

    runs = {backend: train_job.main(["--workdir", str(workdir), *SMALL_MODEL, "train.lr=0.01",
                                     f"train.backend={backend}", f"mlflow.model_name=photoz-{backend}"])
            for backend in ("petastorm", "arrow")}
    client = MlflowClient(runs["arrow"]["tracking_uri"])
    mlflow.set_tracking_uri(runs["arrow"]["tracking_uri"])
    for backend, out in runs.items():
        assert out["epochs"] == 3 and out["distributed"]["local_mode"], backend
        assert out["promotion"]["version"] == 1 and out["promotion"]["promoted"], backend
        m = out["metrics"]
        assert m["val_sigma_nmad"] < 0.5 and 0 < m["val_crps"] < 1.0, (backend, m)
        assert client.get_run(out["run_id"]).data.params["train.backend"] == backend
        assert len(client.get_metric_history(out["run_id"], "val_nll")) == 3
        assert int(client.get_model_version_by_alias(f"photoz-{backend}", "champion").version) == 1
        assert not (workdir / "train" / f"photoz-{backend}").exists(), "run folder (and petastorm cache) removed"
        pred = PhotozModel(download_model(f"models:/photoz-{backend}@champion")).predict_table(
            matched_from_redshift(100, 7))
        assert len(pred) == 100 and np.isfinite(pred.z_phot_mean).all()
    assert runs["petastorm"]["counts"] == runs["arrow"]["counts"]
    # Both learn from the features: a feed that misaligned features and redshifts would score no
    # better than one Gaussian of the training redshifts for every object. (Comparing the two
    # backends' CRPS to each other was flaky: 3 epochs of this tiny model vary 0.10-0.34.)
    no_skill = no_skill_crps(workdir / "features" / "sdss_wise9")
    for backend, out in runs.items():
        assert out["metrics"]["val_crps"] < 0.8 * no_skill, (backend, out["metrics"]["val_crps"], no_skill)


def no_skill_crps(features) -> float:
    """Mean CRPS on the validation split of N(mean, std) of the training redshifts."""
    import pyarrow.parquet as pq

    from photoz_spark.model import mdn

    table = pq.read_table(features / "dataset", columns=["z_spec", "split"], partitioning=None).to_pandas()
    train, val = table.z_spec[table.split == "train"], table.z_spec[table.split == "validation"]
    one = torch.ones(len(val), 1, dtype=torch.float64)
    return float(mdn.crps(one, one * train.mean(), one * train.std(),
                          torch.tensor(val.to_numpy(), dtype=torch.float64)).mean())
