"""The scoring path's float32 standardisation (PhotozModel.standardised) against features.stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from photoz_spark.bands import load_bands
from photoz_spark.features.sequencing import sequence
from photoz_spark.features.stats import compute_stats, standardise
from photoz_spark.model import BiLSTMMDN, ModelConfig, mixture
from photoz_spark.registry import artifact
from photoz_spark.toy import toy_matched_table

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", params=["flux", "asinh_mag"])
def model_and_rows(tmp_path_factory, request):
    registry = load_bands()
    band_set = registry.band_set("all14")
    raw, observed, _ = sequence(toy_matched_table(500, 4), band_set, registry)
    observed[::7, 3] = False  # gaps: unobserved steps must read as 0 whatever their raw value
    raw[::7, 6:8] = np.nan
    config = ModelConfig(n_steps=len(band_set), hidden1=8, hidden2=4, dense=8, n_components=3)
    torch.manual_seed(2)
    stats = compute_stats(raw[100:], observed[100:], band_set, representation=request.param)
    stats["mean"][0][0] += 1e4  # a large offset: float32 rounding of x - mean must stay small
    directory = tmp_path_factory.mktemp("model")
    layout = {"band_set": band_set.name, "bands": band_set.names, "n_steps": len(band_set), "n_channels": 2}
    artifact.save_model_files(directory, BiLSTMMDN(config).state_dict(),
                              {"model_config": config.to_dict(), "layout": layout, "stats": stats})
    return artifact.PhotozModel(directory, registry), raw, observed, stats


def test_float32_standardisation_matches_the_float64_one(model_and_rows):
    model, raw, observed, stats = model_and_rows
    feats, mask = model.standardised(raw, observed)
    expected = standardise(raw, observed, stats)
    assert feats.dtype == torch.float32 and mask.dtype == torch.bool
    assert np.array_equal(mask.numpy(), observed)
    assert np.isfinite(feats.numpy()).all()
    assert np.abs(feats.numpy() - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    assert (feats.numpy()[::7, 6:8] == 0).all()  # the NaN of an unobserved step never reaches the network


def test_mixture_of_equals_the_network_on_standardise(model_and_rows):
    model, raw, observed, stats = model_and_rows
    net_input = torch.from_numpy(standardise(raw, observed, stats))
    with torch.inference_mode():
        expected = mixture(*model.network(net_input, torch.from_numpy(observed)))
    for got, want in zip(model.mixture_of(raw, observed), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        model.standardised(raw[:, :-2], observed[:, :-1])


# --- the scoring task: fixed-size mixture lists, overlapped read/score/write, GPU share (#17) ---

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    registry = load_bands()
    band_set = registry.band_set("all14")
    raw, observed, _ = sequence(toy_matched_table(300, 4), band_set, registry)
    config = ModelConfig(n_steps=len(band_set), hidden1=8, hidden2=4, dense=8, n_components=5)
    torch.manual_seed(3)
    directory = tmp_path_factory.mktemp("task-model")
    layout = {"band_set": band_set.name, "bands": band_set.names, "n_steps": len(band_set), "n_channels": 2}
    artifact.save_model_files(directory, BiLSTMMDN(config).state_dict(),
                              {"model_config": config.to_dict(), "layout": layout,
                               "stats": compute_stats(raw, observed, band_set)})
    return directory


def _score_all(directory, overlap: str, batches):
    from types import SimpleNamespace

    from photoz_spark.registry.resolve import ModelFiles
    from photoz_spark.scoring import task

    checks = SimpleNamespace(add=lambda item: None)
    fn = task.scorer(SimpleNamespace(value=ModelFiles.from_dir(directory)), ("RA", "DEC"), None,
                     task.Runtime("cpu", "fp32", overlap=overlap), checks)
    return list(fn(iter(batches)))


def test_overlapped_task_gives_the_same_batches_with_fixed_size_mixture_lists(model_dir):
    import threading

    import pyarrow as pa

    from photoz_spark.export.qp import mixture_arrays

    batches = toy_matched_table(1000, 9).to_batches(max_chunksize=128)
    plain, overlapped = _score_all(model_dir, "off", batches), _score_all(model_dir, "on", batches)
    assert len(plain) == len(overlapped) == len(batches)
    for a, b in zip(plain, overlapped, strict=True):
        assert a.equals(b)
    assert not any(t.name in ("photoz-read", "photoz-score") for t in threading.enumerate())
    table = pa.Table.from_batches(plain)
    assert table.schema.field("mixmod_means").type == pa.list_(pa.float32(), 5)
    arrays = mixture_arrays(table)  # the qp export reads fixed-size lists
    assert arrays["weights"].shape == (1000, 5)
    np.testing.assert_allclose(arrays["weights"].sum(axis=1), 1.0, rtol=1e-5)


def test_a_failing_read_fails_the_overlapped_task(model_dir):
    def broken():
        yield toy_matched_table(10, 1).to_batches()[0]
        raise OSError("truncated pixel file")

    with pytest.raises(OSError, match="truncated pixel file"):
        _score_all(model_dir, "on", broken())


@pytest.mark.parametrize("share, device, local, executor_gpus, dynamic, expected", [
    (0.25, "auto", False, 1, False, 0.25),     # a GPU cluster: four scoring tasks per GPU
    (0.25, "cuda", False, 2, False, 0.25),
    (0.25, "cpu", False, 1, False, None),      # scoring on CPU: no GPU asked for
    (0.25, "auto", True, 0, False, None),      # local mode schedules no task resources
    (0.25, "auto", False, 0, False, None),     # a CPU cluster
    (0.25, "auto", False, 1, True, None),      # dynamic allocation: Spark refuses task-only profiles
    (0.0, "auto", False, 1, False, None),      # off
])
def test_task_gpus(share, device, local, executor_gpus, dynamic, expected):
    from photoz_spark.scoring.task import task_gpus

    assert task_gpus(share, device, local, executor_gpus, dynamic) == expected


def test_runtime_settings_are_checked():
    from photoz_spark.config import ConfigError, load_config
    from photoz_spark.scoring.task import Runtime

    cfg = load_config("score.yaml")["score"]
    runtime = Runtime.from_config(cfg)
    assert runtime.gpus_per_task == 0.25 and runtime.overlap == "auto"
    assert runtime.overlaps("cuda:0") and not runtime.overlaps("cpu")
    for key, bad in (("gpus_per_task", 1.5), ("overlap", "sometimes")):
        with pytest.raises(ConfigError, match=f"score.{key}"):
            Runtime.from_config({**cfg, key: bad})
