"""Mixture maths against scipy and numerical integration; the network; the training loop."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from photoz_spark.model import BiLSTMMDN, ModelConfig, mdn, mixture
from photoz_spark.train.loop import TrainSettings, train

pytestmark = pytest.mark.unit

W = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
MU = torch.tensor([[0.5, 2.0, 2.6]], dtype=torch.float64)
SIGMA = torch.tensor([[0.1, 0.3, 0.2]], dtype=torch.float64)


def scipy_cdf(x):
    return sum(w * stats.norm.cdf(x, m, s) for w, m, s in zip(W[0].numpy(), MU[0].numpy(), SIGMA[0].numpy()))


def test_nll_matches_scipy_and_is_stable():
    y = torch.tensor([1.7], dtype=torch.float64)
    pdf = sum(w * stats.norm.pdf(1.7, m, s) for w, m, s in zip(W[0].numpy(), MU[0].numpy(), SIGMA[0].numpy()))
    assert float(mdn.nll(torch.log(W), MU, SIGMA, y)) == pytest.approx(-np.log(pdf), rel=1e-12)
    far = mdn.nll(torch.log(W), MU, SIGMA, torch.tensor([80.0], dtype=torch.float64))
    assert torch.isfinite(far) and float(far) > 1e4  # logsumexp: no underflow to inf


def test_mean_std_cdf_quantiles_pit():
    mean = float((W * MU).sum())
    var = float((W * (SIGMA ** 2 + MU ** 2)).sum()) - mean ** 2
    assert float(mdn.mean(W, MU)) == pytest.approx(mean)
    assert float(mdn.std(W, MU, SIGMA)) == pytest.approx(np.sqrt(var))
    assert float(mdn.cdf(W, MU, SIGMA, torch.tensor([1.9], dtype=torch.float64))) == pytest.approx(scipy_cdf(1.9))
    for q in (0.025, 0.16, 0.5, 0.84, 0.975):
        zq = float(mdn.quantile(W, MU, SIGMA, q))
        assert scipy_cdf(zq) == pytest.approx(q, abs=1e-9)
    assert float(mdn.pit(W, MU, SIGMA, mdn.median(W, MU, SIGMA))) == pytest.approx(0.5, abs=1e-9)
    grid = torch.linspace(0, 4, 9, dtype=torch.float64)
    np.testing.assert_allclose(mdn.cdf_grid(W, MU, SIGMA, grid)[0].numpy(), scipy_cdf(grid.numpy()), atol=1e-12)


def test_mode_is_the_highest_peak():
    # The heaviest component (mu = 2.0) is wide; the narrow one at 2.6 has the higher peak.
    xs = np.linspace(0, 4, 400001)
    pdf = sum(w * stats.norm.pdf(xs, m, s) for w, m, s in zip(W[0].numpy(), MU[0].numpy(), SIGMA[0].numpy()))
    assert float(mdn.mode(W, MU, SIGMA)) == pytest.approx(xs[pdf.argmax()], abs=1e-3)


def test_crps_closed_form_matches_integral():
    for y in (0.4, 1.9, 3.5):
        numeric = integrate.quad(lambda x, y=y: (scipy_cdf(x) - (x >= y)) ** 2, -5, 10, points=[y], limit=400)[0]
        closed = float(mdn.crps(W, MU, SIGMA, torch.tensor([y], dtype=torch.float64)))
        assert closed == pytest.approx(numeric, rel=1e-6)
    # A single Gaussian: the textbook formula.
    s, y = 0.3, 1.2
    x = y / s
    expected = s * (x * (2 * stats.norm.cdf(x) - 1) + 2 * stats.norm.pdf(x) - 1 / np.sqrt(np.pi))
    one = torch.ones(1, 1, dtype=torch.float64)
    assert float(mdn.crps(one, 0 * one, s * one, torch.tensor([y], dtype=torch.float64))) == pytest.approx(expected)


def test_network_shapes_and_mask_channel():
    torch.manual_seed(0)
    model = BiLSTMMDN(ModelConfig(n_steps=14)).eval()
    feats, observed = torch.randn(5, 28), torch.ones(5, 14, dtype=torch.bool)
    logits, mu, sigma = model(feats, observed)
    assert logits.shape == mu.shape == sigma.shape == (5, 15)
    w, _, _ = mixture(logits, mu, sigma)
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    assert (sigma > 0).all()
    observed[:, :2] = False  # GALEX missing: the mask channel must change the prediction
    assert not torch.allclose(model(feats, observed)[1], mu)
    n_params = sum(p.numel() for p in model.parameters())
    assert 250_000 < n_params < 400_000  # 128/64 per direction, K = 15


def _toy(n, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g) * 4
    t = torch.arange(6.0)
    flux = torch.sin(z[:, None] * (0.7 + 0.1 * t) + t) + 0.05 * torch.randn(n, 6, generator=g)
    feats = torch.stack([flux, torch.full_like(flux, 0.05)], -1).reshape(n, 12)
    return feats, torch.ones(n, 6, dtype=torch.bool), z


def _fit(tmp_path=None, max_epochs=6, patience=20, name="ckpt.pt"):
    torch.manual_seed(0)
    model = BiLSTMMDN(ModelConfig(n_steps=6, hidden1=16, hidden2=8, dense=16, n_components=3))
    data, val = _toy(512, 0), _toy(256, 1)

    def batches(epoch):
        order = torch.randperm(512, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, 512, 64):
            idx = order[i:i + 64]
            yield data[0][idx], data[1][idx], data[2][idx]

    settings = TrainSettings(max_epochs=max_epochs, lr=3e-3, lr_step_epochs=3, lr_gamma=0.5, patience=patience)
    ckpt = tmp_path / name if tmp_path else None
    return model, train(model, batches, lambda: [val], settings, checkpoint=ckpt)


def test_training_reduces_loss_and_decays_lr():
    _, result = _fit()
    losses = [r["val_loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.3
    # the rate each epoch trained at: x0.5 after every 3 epochs
    assert [r["lr"] for r in result.history][:5] == pytest.approx([3e-3, 3e-3, 3e-3, 1.5e-3, 1.5e-3])
    assert result.best_val_loss == min(losses)


def test_early_stopping_restores_best_weights():
    model, result = _fit(max_epochs=40, patience=2)
    assert result.stopped_early and result.epochs_run < 40
    assert result.epochs_run - 1 - result.best_epoch == 2
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, result.best_state[key])


def test_resume_after_kill_equals_unbroken_run(tmp_path):
    _, unbroken = _fit(max_epochs=5)
    _fit(tmp_path, max_epochs=3)            # "killed" after epoch 3: its checkpoint remains
    _, resumed = _fit(tmp_path, max_epochs=5)
    assert len(resumed.history) == 5
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in unbroken.history])


def test_paper_and_fast_schedules():
    from photoz_spark.train.loop import lr_at

    paper = TrainSettings()
    assert [lr_at(paper, e) for e in (0, 49.9, 50, 99, 100, 150)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-6])
    fast = TrainSettings(batch_size=1024, lr=1e-3, lr_scaling="linear", schedule="cosine", warmup_epochs=2,
                         max_epochs=42, optimizer="adamw")
    assert fast.peak_lr == pytest.approx(8e-3)
    assert lr_at(fast, 1.0) == pytest.approx(8e-3 * 1.001 / 2)    # half-way up the warm-up
    assert lr_at(fast, 2.0) == pytest.approx(8e-3)                # peak
    assert lr_at(fast, 22.0) == pytest.approx(4e-3)               # half-way down the cosine
    assert lr_at(fast, 42.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="optimizer must be one of adam, adamw"):
        TrainSettings(optimizer="sgd")


def test_fast_recipe_trains_with_warmup_and_clipping():
    from photoz_spark.train.loop import lr_at

    torch.manual_seed(0)
    model = BiLSTMMDN(ModelConfig(n_steps=6, hidden1=16, hidden2=8, dense=16, n_components=3, aggregate="flatten"))
    data, val = _toy(512, 0), _toy(256, 1)
    settings = TrainSettings(max_epochs=10, batch_size=128, lr=3e-3, schedule="cosine", warmup_epochs=1,
                             optimizer="adamw", weight_decay=1e-4, grad_clip=1.0)

    def batches(epoch):
        for i in range(0, 512, 128):
            yield data[0][i:i + 128], data[1][i:i + 128], data[2][i:i + 128]

    result = train(model, batches, lambda: [val], settings, steps_per_epoch=4)
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(3e-3 * (0.75 + 1e-3))        # last warm-up step of epoch 0
    assert lrs[1] > lrs[2] > lrs[9] > 0                          # cosine decay after the warm-up
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] - 0.3
    short = TrainSettings(max_epochs=5, schedule="cosine", warmup_epochs=2)
    assert lr_at(short, 0.25) == pytest.approx(1e-3 * (0.25 + 1e-3) / 0.5)  # warm-up capped at max_epochs / 10


def test_head_init_starts_the_mixture_at_the_redshift_quantiles():
    from photoz_spark.model import mdn
    from photoz_spark.model.network import mixture

    torch.manual_seed(0)
    config = ModelConfig(n_steps=6, hidden1=16, hidden2=8, dense=16, n_components=4)
    net = BiLSTMMDN(config)
    feats, observed, z = _toy(512, 0)
    net.init_head(z)
    net.eval()
    with torch.no_grad():
        w, mu, sigma = mixture(*net(feats, observed))
    # the means sit near the quantiles at 1/8, 3/8, 5/8, 7/8 of z (uniform on [0, 4]): 0.5, 1.5, 2.5, 3.5
    assert mu.mean(0).tolist() == pytest.approx([0.5, 1.5, 2.5, 3.5], abs=0.15)
    assert w.mean(0).tolist() == pytest.approx([0.25] * 4, abs=0.03)
    assert sigma.mean().item() == pytest.approx(0.75, abs=0.1)     # (3.5 - 0.5) / 4
    # so the first loss is about the entropy of the redshift distribution, not a miss by 2 units
    with torch.no_grad():
        start = mdn.nll(*net(feats, observed), z).mean().item()
    assert start < 1.7  # measured 1.59; the default head starts at 5-7 on these data
    with pytest.raises(ValueError, match="at least one finite training redshift"):
        net.init_head(torch.tensor([float("nan")]))


def test_head_init_learns_faster_than_the_default():
    """Same seed, data and steps: starting at the quantiles ends lower (the reason for the fast recipe)."""
    data, val = _toy(512, 0), _toy(256, 1)

    def batches(epoch):
        for i in range(0, 512, 64):
            yield data[0][i:i + 64], data[1][i:i + 64], data[2][i:i + 64]

    losses = {}
    for how in ("torch", "quantiles"):
        torch.manual_seed(0)
        model = BiLSTMMDN(ModelConfig(n_steps=6, hidden1=16, hidden2=8, dense=16, n_components=3))
        if how == "quantiles":
            model.init_head(data[2])
        settings = TrainSettings(max_epochs=2, lr=1e-3, patience=20, head_init=how)
        losses[how] = train(model, batches, lambda: [val], settings).history[-1]["val_loss"]
    assert losses["quantiles"] < losses["torch"] - 0.2, losses
    with pytest.raises(ValueError, match="head_init must be one of torch, quantiles"):
        TrainSettings(head_init="zeros")


def test_train_redshifts_of_a_streamed_feed_sample_its_batches():
    from photoz_spark.train.feeding import train_redshifts

    class Stream:  # a streamed feed: each epoch call yields the next batches of an endless stream
        def __init__(self):
            self.next = 0

        def train_batches(self, epoch, rank, world, batch_size, seed):
            for _ in range(2):
                z = torch.arange(self.next, self.next + batch_size, dtype=torch.float32)
                self.next += batch_size
                yield None, None, z

    z = train_redshifts(Stream(), 0, 1, 100, 0, rows=450)
    assert z.tolist() == list(range(600))  # whole epochs until at least 450 rows


@pytest.mark.parametrize("aggregate, width", [("mean", 8), ("final", 8), ("flatten", 5 * 8)])
def test_aggregate_shapes_and_band_identity(aggregate, width):
    torch.manual_seed(0)
    net = BiLSTMMDN(ModelConfig(n_steps=5, hidden1=8, hidden2=4, dense=8, n_components=3, aggregate=aggregate))
    assert net.dense.in_features == width
    steps = torch.randn(2, 5, 8)
    swapped = steps[:, [1, 0, 2, 3, 4]]                 # band 0 and band 1 exchange what they said
    out = net.aggregate(steps)
    assert out.shape == (2, width)
    if aggregate == "mean":                              # blind to which band said what
        torch.testing.assert_close(net.aggregate(swapped), out)
    elif aggregate == "flatten":                         # band t's outputs at [t*8, (t+1)*8)
        torch.testing.assert_close(out[:, 8:16], steps[:, 1])
        assert not torch.allclose(net.aggregate(swapped), out)
    else:                                                # forward at the last band, backward at the first
        torch.testing.assert_close(out, torch.cat([steps[:, 4, :4], steps[:, 0, 4:]], -1))
    logits, mu, sigma = net(torch.randn(3, 10), torch.ones(3, 5, dtype=torch.bool))
    assert logits.shape == mu.shape == sigma.shape == (3, 3)
    with pytest.raises(ValueError, match="model.aggregate must be one of flatten, final, mean"):
        ModelConfig(n_steps=5, aggregate="sum")


def test_inference_batch_norm_is_the_batch_norm_affine_map():
    torch.manual_seed(0)
    net = BiLSTMMDN(ModelConfig(n_steps=5, hidden1=8, hidden2=4, dense=8, n_components=3))
    with torch.no_grad():
        for norm in (net.norm1, net.norm2):
            norm.running_mean.uniform_(-1.0, 1.0)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(32, 5, 16)
    net.eval()
    expected = torch.nn.BatchNorm1d.forward(net.norm1, x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(net.norm1(x), expected, atol=1e-5)
    net.train()  # training still normalises with the batch's own statistics
    y = net.norm1(x)
    assert torch.allclose(((y - net.norm1.bias) / net.norm1.weight).mean(dim=(0, 1)), torch.zeros(16), atol=1e-5)


def test_training_batch_norm_matches_the_transposed_batch_norm():
    """The [B*T, F] layout used in training gives BatchNorm1d's [B, F, T] output, gradients and
    running statistics (same per-feature mean, variance and count)."""
    from photoz_spark.model.network import _SeqBatchNorm
    torch.manual_seed(0)
    ours, stock = _SeqBatchNorm(16), torch.nn.BatchNorm1d(16)
    x = (3.0 * torch.randn(32, 5, 16) + 1.0).requires_grad_()
    x_stock = x.detach().clone().requires_grad_()
    g = torch.randn(32, 5, 16)
    y, y_stock = ours(x), stock(x_stock.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(y, y_stock, atol=1e-5, rtol=1e-5)
    y.backward(g)
    y_stock.backward(g)
    torch.testing.assert_close(x.grad, x_stock.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, stock.running_mean)
    torch.testing.assert_close(ours.running_var, stock.running_var)
    assert (ours.running_var > 1.4).all()  # moved from 1 towards the batch variance 9: a real comparison


def test_cpu_dropout_keeps_one_minus_p_scaled_and_is_off_in_eval():
    from photoz_spark.model.network import _Dropout
    torch.manual_seed(0)
    drop = _Dropout(0.3)
    x = torch.ones(200, 14, 64, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005           # 179,200 draws: sd 0.001
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1.0 / 0.7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.7)          # the same mask in the backward
    assert not torch.equal(drop(x), y)                             # a fresh mask each call
    drop.eval()
    assert torch.equal(drop(x), x)


def test_cpu_chunks_give_the_same_mixture(tmp_path, monkeypatch):
    from photoz_spark.bands import load_bands
    from photoz_spark.features.sequencing import sequence
    from photoz_spark.features.stats import compute_stats
    from photoz_spark.registry import artifact as serving
    from photoz_spark.toy import toy_matched_table

    # 384 rows x 14 steps x 2 directions x 4 gates x 128 x 4 B = 21 MiB, under the 24 MiB budget
    assert serving.cpu_chunk_rows(ModelConfig(n_steps=14)) == 384
    assert serving.cpu_chunk_rows(ModelConfig(n_steps=14, hidden1=4096)) == 64
    registry = load_bands()
    band_set = registry.band_set("sdss_wise9")
    raw, observed, _ = sequence(toy_matched_table(300, 3), band_set, registry)
    config = ModelConfig(n_steps=len(band_set), hidden1=8, hidden2=4, dense=8, n_components=3)
    torch.manual_seed(1)
    layout = {"band_set": band_set.name, "bands": band_set.names, "n_steps": len(band_set), "n_channels": 2}
    serving.save_model_files(tmp_path, BiLSTMMDN(config).state_dict(), {
        "model_config": config.to_dict(), "layout": layout, "stats": compute_stats(raw, observed, band_set)})
    model = serving.PhotozModel(tmp_path, registry)
    whole = model.mixture_of(raw, observed)                       # 300 rows: one call
    monkeypatch.setattr(serving, "CPU_ACTIVATION_BYTES", 1)       # 64-row chunks: five calls
    chunked = model.mixture_of(raw, observed)
    for a, b in zip(whole, chunked, strict=True):
        assert a.shape == (300, 3) and torch.allclose(a, b, atol=1e-6)
    assert [t.shape for t in model.mixture_of(raw[:0], observed[:0])] == [(0, 3)] * 3
