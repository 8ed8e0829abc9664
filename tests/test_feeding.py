"""Training ranks read their own row groups (#16.4) and are fed from the fastest place (#17): on CPU."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from photoz_spark import hats
from photoz_spark.bands import load_bands
from photoz_spark.config import load_config
from photoz_spark.errors import InputError
from photoz_spark.features.build import batch_summary, feature_batch, layout, output_schema
from photoz_spark.features.catalog import LAYOUT_FILE, STATS_FILE, FeaturesCatalog, shard_slices
from photoz_spark.features.run import feature_spec, properties
from photoz_spark.features.stats import stats_from_moments
from photoz_spark.toy import toy_matched_table
from photoz_spark.train import feeding
from photoz_spark.train.feeding import (
    ArrowFeed,
    FeatureData,
    epoch_batches,
    epoch_source,
    placement,
    prefetched,
)

pytestmark = pytest.mark.unit


def write_features(directory: Path, rows: int = 900, files: int = 3, row_group: int = 41,
                   nan_train_row: bool = False) -> pa.Table:
    """A toy sdss_wise9 features catalog in ``files`` files of ``row_group``-row groups; the table."""
    config = load_config("features.yaml", overrides=["features.band_set=sdss_wise9"])
    spec = feature_spec(config["features"], load_bands(), {"photoz_catalog": "dr16q"})  # the toy is DR16Q-like
    source = toy_matched_table(rows, seed=3)
    schema = output_schema(spec, source.schema)
    table = pa.Table.from_batches([feature_batch(b, spec, schema) for b in source.to_batches()], schema=schema)
    summary = batch_summary(table.combine_chunks().to_batches()[0], spec)
    stats = stats_from_moments({k: np.asarray(v) for k, v in summary["train"].items()}, spec.band_set)
    if nan_train_row:
        z = table["z_spec"].to_numpy().copy()
        z[int(np.flatnonzero(table["split"].to_numpy(zero_copy_only=False) == "train")[5])] = np.nan
        table = table.set_column(table.schema.get_field_index("z_spec"), "z_spec", pa.array(z))
    table = table.append_column("row", pa.array(np.arange(rows)))
    per_file = -(-rows // files)
    for i in range(files):
        path = directory / hats.DATASET_DIR / hats.pixel_relpath(0, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(i * per_file, per_file), path, row_group_size=row_group)
    # What makes it a catalog (build_features writes both): the recorded schema and the properties.
    pq.write_metadata(table.schema, directory / hats.DATASET_DIR / "_common_metadata")
    (directory / hats.PROPERTIES_FILE).write_text(f"dataproduct_type=object\nhats_nrows={rows}\n")
    (directory / STATS_FILE).write_text(json.dumps({**stats, "split": "train"}))
    lay = layout(spec, "toy")
    (directory / LAYOUT_FILE).write_text(json.dumps(lay))
    assert properties(lay)  # the layout is one build_features would write
    return table


class ThreadSum:
    """A collective sum for ranks run as threads (what ``train.run.rank_sum`` does over DDP)."""

    def __init__(self, world: int):
        self.barrier, self.parts = threading.Barrier(world), {}

    def of(self, rank: int):
        def reduce(values: np.ndarray) -> np.ndarray:
            self.parts[rank] = values.copy()
            self.barrier.wait()
            total = sum(self.parts[r] for r in sorted(self.parts))
            self.barrier.wait()  # nobody overwrites its part before everybody summed
            return total
        return reduce


def run_ranks(directory: Path, world: int, split: str):
    """Each rank's shard of ``split`` (ranks as threads with a collective sum), or its error; and
    the row groups each rank read."""
    summing, out, reads = ThreadSum(world), {}, {}

    def rank(r: int):
        feed = ArrowFeed(directory, reduce=summing.of(r))
        reads[r] = set()
        shard = feed.catalog.read_shard

        def spy(groups, slices, *args):
            reads[r].update(g for g, _, _ in slices)
            return shard(groups, slices, *args)

        feed.catalog.read_shard = spy
        try:
            out[r] = feed.load(split, r, world, check=True)
        except InputError as err:
            out[r] = err

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out, reads


def test_shard_slices_cover_the_split_once():
    counts = [5, 0, 7, 3, 9]
    for world in (1, 2, 3, 4):
        n = sum(counts) // world
        seen = []
        for rank in range(world):
            slices = shard_slices(counts, rank, world)
            assert sum(hi - lo for _, lo, hi in slices) == n
            seen += [(g, i) for g, lo, hi in slices for i in range(lo, hi)]
        everything = [(g, i) for g, c in enumerate(counts) for i in range(c)]
        assert seen == everything[:n * world]  # in order, no overlap, only the remainder left out


def test_evaluate_split_is_the_same_in_cpu_chunks(monkeypatch):
    """The network on 8-row chunks gives the metrics and per-object scores of one call per batch."""
    from photoz_spark.model import BiLSTMMDN, ModelConfig
    from photoz_spark.train import run

    torch.manual_seed(0)
    net = BiLSTMMDN(ModelConfig(n_steps=5, hidden1=8, hidden2=4, dense=8, n_components=3))
    data = FeatureData(torch.randn(50, 10), torch.rand(50, 5) > 0.2, 1.0 + torch.rand(50))
    assert run.eval_rows(net, "cpu") == 19648  # 24 MiB / (5 steps x 2 dirs x 4 gates x 8 x 4 bytes), in 64s
    assert run.eval_rows(net, "cuda") == 8192
    monkeypatch.setattr(run, "eval_rows", lambda model, device: 8192)
    whole, whole_arrays = run.evaluate_split(net, data)
    monkeypatch.setattr(run, "eval_rows", lambda model, device: 8)
    chunked, chunked_arrays = run.evaluate_split(net, data)
    assert chunked["crps"] == pytest.approx(whole["crps"], rel=1e-6)
    torch.testing.assert_close(torch.as_tensor(chunked_arrays["z_phot"]), torch.as_tensor(whole_arrays["z_phot"]))


@pytest.mark.parametrize("split", ["train", "validation"])
def test_two_ranks_read_their_own_row_groups_and_together_the_split(tmp_path, split):
    table = write_features(tmp_path)
    rows = table.filter(pc.equal(table["split"], split))
    out, reads = run_ranks(tmp_path, 2, split)
    n = len(rows) // 2
    assert len(out[0]) == len(out[1]) == n
    whole = ArrowFeed(tmp_path).load(split)  # one process, the whole split: what the ranks split between them
    assert torch.equal(torch.cat([out[0].z, out[1].z]), whole.z[:2 * n])
    assert torch.equal(torch.cat([out[0].features, out[1].features]), whole.features[:2 * n])
    np.testing.assert_array_equal(whole.z.numpy(), rows["z_spec"].to_numpy().astype(np.float32))
    # Each rank read only the row groups of its range: at most one is shared (the boundary one).
    groups = len(FeaturesCatalog(tmp_path).row_groups())
    assert groups >= 20 and len(reads[0]) + len(reads[1]) <= groups + 1
    assert len(reads[0] & reads[1]) <= 1 and max(reads[0]) <= min(reads[1])


def test_union_of_the_ranks_rows_is_the_split_exactly(tmp_path):
    table = write_features(tmp_path, rows=900)
    train = table.filter(pc.equal(table["split"], "train"))
    world = 2 if len(train) % 2 == 0 else 3
    if len(train) % world:
        pytest.skip("toy split size not divisible")
    feed_reads = []
    original = FeaturesCatalog.read_shard

    def rows_read(self, groups, slices, split, columns):
        part = original(self, groups, slices, split, [*columns, "row"])
        feed_reads.append(part["row"].to_numpy())
        return part.select(columns)

    FeaturesCatalog.read_shard = rows_read
    try:
        run_ranks(tmp_path, world, "train")
    finally:
        FeaturesCatalog.read_shard = original
    union = np.concatenate(feed_reads)
    assert len(union) == len(np.unique(union)) == len(train)  # no overlap, nothing missing
    assert set(union) == set(train["row"].to_numpy())


def test_nan_in_the_train_split_is_one_line_on_every_rank(tmp_path):
    write_features(tmp_path, nan_train_row=True)
    out, _ = run_ranks(tmp_path, 2, "train")
    assert all(isinstance(err, InputError) for err in out.values())
    assert {str(err) for err in out.values()} == {
        "1 rows of the train split hold NaN/inf after standardisation; rebuild the features"}
    ArrowFeed(tmp_path).load("validation", check=True)  # the other splits are fine


def test_train_rank_leaves_its_error_for_the_driver(tmp_path):
    from photoz_spark.train.run import model_config, relay_rank_error, train_rank

    write_features(tmp_path / "features", nan_train_row=True)
    config = load_config("train.yaml", overrides=["train.max_epochs=1", "train.batch_size=32"])
    out = tmp_path / "run"
    out.mkdir()
    mcfg = model_config(config["model"], json.loads((tmp_path / "features" / LAYOUT_FILE).read_text()))
    with pytest.raises(InputError, match="NaN/inf"):
        train_rank(str(tmp_path / "features"), str(out), config["train"], mcfg, False)
    assert not (out / "rank-0.status").exists()
    with pytest.raises(InputError) as err:
        relay_rank_error(out)  # what run_distributed raises when a rank did not finish
    assert str(err.value) == "1 rows of the train split hold NaN/inf after standardisation; rebuild the features"


# --- placement -----------------------------------------------------------------------------------

def toy_data(n: int = 1000) -> FeatureData:
    g = torch.Generator().manual_seed(0)
    return FeatureData(torch.randn(n, 6, generator=g), torch.rand(n, 3, generator=g) > 0.2, torch.rand(n, generator=g))


@pytest.mark.parametrize(("device", "size", "free", "expected"), [
    ("cpu", 10, 10**9, "host"), ("cuda", 10, 10**9, "device"), ("cuda", 6 * 10**8, 10**9, "pinned"),
    ("cuda", 10, None, "pinned"),
])
def test_placement(device, size, free, expected):
    assert placement(size, device, free) == expected


def _same(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u.cpu(), v.cpu()) for u, v in zip(x, y, strict=True))


class _Shard:
    """An ArrowFeed stand-in holding a shard already read."""

    def __init__(self, data):
        self.data = data

    def train_data(self, rank, world):
        return self.data


@pytest.mark.parametrize("how", ["device", "pinned", "host"])
def test_every_placement_gives_the_plain_batches(how, monkeypatch):
    data = toy_data()
    monkeypatch.setattr(feeding, "ArrowFeed", _Shard)
    epochs, used = epoch_source(_Shard(data), 0, 1, 64, seed=3, device=torch.device("cpu"), how=how)
    assert used == how
    for epoch in (0, 1):
        _same(epochs(epoch), epoch_batches(data, 64, epoch, seed=3))


def test_prefetched_keeps_order_raises_and_stops():
    items = [(torch.tensor([i]),) for i in range(20)]
    assert [b[0].item() for b in prefetched(iter(items), depth=2)] == list(range(20))

    def broken():
        yield items[0]
        raise ValueError("reader failed")

    got = prefetched(broken())
    assert next(got)[0].item() == 0
    with pytest.raises(ValueError, match="reader failed"):
        next(got)
    endless = prefetched(iter(lambda: items[0], None), depth=2)  # consumer stops early: the thread ends
    next(endless)
    endless.close()
    assert not any(t.name == "photoz-prefetch" for t in threading.enumerate())


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_train_rank_starts_the_mixture_as_the_recipe_says(tmp_path, recipe):
    """train.recipe=fast (head_init quantiles): the rank starts the head's means at the quantiles of
    its training redshifts; paper keeps PyTorch's initialisation. max_epochs=0 saves the start."""
    from photoz_spark.train.run import model_config, train_rank

    write_features(tmp_path / "features")
    config = load_config("train.yaml", overrides=[f"train.recipe={recipe}", "train.max_epochs=0",
                                                  "train.batch_size=32"])
    out = tmp_path / "run"
    out.mkdir()
    mcfg = model_config(config["model"], json.loads((tmp_path / "features" / LAYOUT_FILE).read_text()))
    train_rank(str(tmp_path / "features"), str(out), config["train"], mcfg, False)
    k = mcfg["n_components"]
    means = torch.load(out / "best.pt")["head.bias"][k:2 * k].numpy()
    z = ArrowFeed(tmp_path / "features").load("train").z.numpy()
    quantiles = np.quantile(z, (np.arange(k) + 0.5) / k)
    assert np.allclose(means, quantiles, atol=1e-5) == (recipe == "fast")
