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
