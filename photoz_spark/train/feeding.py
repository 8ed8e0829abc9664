"""Feeding the features Parquet to torch: one small interface, even shards per rank.

Both backends implement ``Feed``, what a training rank reads:

``ArrowFeed`` (the default, ``train.backend=arrow``) reads the features dataset's Parquet
fragments with ``pyarrow.dataset``, keeps the rows of one split, standardises them with the
training statistics and gives each rank a contiguous, equally sized slice.

``PetastormFeed`` (``train.backend=petastorm``, the optional extra ``.[petastorm]``) has Spark
materialise each split once with petastorm's ``make_spark_converter`` on the driver; each rank
then reads its row-group shard with ``make_torch_dataloader(cur_shard=rank, shard_count=world)``
as an endless stream, standardised with the same statistics. petastorm is imported only here,
lazily: the default stack does not have it.

Either way every rank takes (rows of the split // world) // batch_size full batches per epoch
(unequal step counts would hang DDP's all-reduce) and gets the same number of validation rows
(DDP broadcasts the BatchNorm buffers at every forward, evaluation included).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.compute as pc
import torch

from photoz_spark.config import ConfigError
from photoz_spark.errors import InputError
from photoz_spark.features.build import list_matrix
from photoz_spark.features.catalog import STATS_FILE, FeaturesCatalog, read_contract_file, shard_slices
from photoz_spark.features.stats import standardise
from photoz_spark.threads import background

COLUMNS = ["features", "observed", "z_spec", "split"]
PETASTORM_CONSTRAINTS = ".ci/petastorm-constraints.txt"

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # standardised features [B, T*C], observed [B, T], z [B]


@dataclass
class FeatureData:
    """Standardised tensors of one split (or one rank's shard of it)."""

    features: torch.Tensor   # float32 [N, T*C]
    observed: torch.Tensor   # bool [N, T]
    z: torch.Tensor          # float32 [N]

    def __len__(self) -> int:
        return len(self.z)


class Feed(Protocol):
    """What a training rank reads. Implemented by ``ArrowFeed`` and ``PetastormFeed``."""

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int) -> Iterable[Batch]:
        """One epoch of standardised training batches for ``rank`` of ``world``: exactly
        (rows in the train split // world) // batch_size full batches, on every rank."""

    def eval_data(self, split: str, rank: int = 0, world: int = 1) -> FeatureData:
        """The standardised rows of ``split`` for ``rank``: rows // world of them on every rank."""

    def close(self) -> None:
        """Release what the rank opened (readers, threads)."""


class ArrowFeed:
    """Reads one split of a features dataset with pyarrow.dataset, sharded evenly by rank.

    A rank reads only its share: the split's rows are counted per row group (each rank counts
    the ``split`` column of every ``world``-th row group and ``reduce`` sums the counts over the
    ranks), and the rank then reads just the row groups holding its contiguous range of rows
    (``features.catalog.shard_slices``). Without ``reduce`` a rank counts every row group itself.
    """

    def __init__(self, features_dir: str | Path, reduce: Callable[[np.ndarray], np.ndarray] | None = None):
        """Args:
            features_dir: the features catalog.
            reduce: a collective sum over the ranks (under DDP, an all-reduce), called by every
                rank in the same order; None: counts are computed locally (and no rank waits).
        """
        self.features_dir = Path(features_dir)
        self.catalog = FeaturesCatalog(self.features_dir)
        self.layout, self.stats, self.dataset = self.catalog.layout, self.catalog.stats, self.catalog.dataset
        self.reduce = reduce
        self._groups: list | None = None
        self._train: dict[tuple[int, int], FeatureData] = {}

    @property
    def width(self) -> int:
        return self.layout["n_steps"] * self.layout["n_channels"]

    def count(self, split: str) -> int:
        return self.dataset.count_rows(filter=pc.field("split") == split)

    def _sum(self, values: np.ndarray, world: int) -> np.ndarray:
        return self.reduce(values) if self.reduce is not None and world > 1 else values

    def load(self, split: str, rank: int = 0, world: int = 1, check: bool = False) -> FeatureData:
        """The split's rows for ``rank`` of ``world``: equal sizes (the remainder is dropped),
        the same rows as slicing the whole split; only this rank's row groups are read.

        Raises:
            InputError: ``check`` and a rank's rows hold NaN/inf (every rank raises the same line).
        """
        if self._groups is None:
            self._groups = self.catalog.row_groups()
        groups = self._groups
        mine = range(rank, len(groups), world) if self.reduce is not None and world > 1 else range(len(groups))
        counts = self._sum(self.catalog.split_counts(groups, split, mine), world)
        table = self.catalog.read_shard(groups, shard_slices(counts, rank, world), split, COLUMNS[:3])
        observed = list_matrix(table["observed"], self.layout["n_steps"], bool)
        raw = list_matrix(table["features"], self.width, np.float32)
        feats = standardise(raw, observed, self.stats)
        data = FeatureData(torch.from_numpy(feats), torch.from_numpy(observed),
                           torch.from_numpy(table["z_spec"].to_numpy().astype(np.float32)))
        if check:
            bad = int(self._sum(np.array([count_not_finite(data)], np.int64), world)[0])
            if bad:
                raise InputError(not_finite_message(bad, split))
        return data

    def train_data(self, rank: int, world: int) -> FeatureData:
        """This rank's training shard, read (and checked for NaN/inf) once."""
        if (rank, world) not in self._train:
            self._train[(rank, world)] = self.load("train", rank, world, check=True)
        return self._train[(rank, world)]

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int) -> Iterable[Batch]:
        return epoch_batches(self.train_data(rank, world), batch_size, epoch, seed)  # reshuffled every epoch

    def eval_data(self, split: str, rank: int = 0, world: int = 1) -> FeatureData:
        return self.load(split, rank, world, check=True)

    def stream(self, split: str, batch_size: int = 8192) -> Iterator[Batch]:
        """The whole split as standardised batches, read as they are used (the driver's evaluation:
        it never holds a split's features)."""
        for raw, observed, z in self.catalog.batches(split, batch_size):
            yield (torch.from_numpy(standardise(raw, observed, self.stats)), torch.from_numpy(observed),
                   torch.from_numpy(z))

    def close(self) -> None:
        self._train.clear()


def count_not_finite(data: FeatureData) -> int:
    """Rows whose standardised features or z are NaN/inf."""
    bad = ~torch.isfinite(data.features).all(dim=1) | ~torch.isfinite(data.z)
    return int(bad.sum())


def not_finite_message(rows: int, split: str) -> str:
    """The one line a rank raises (and the driver relays) for NaN/inf rows."""
    return (f"{rows} rows of the {split} split hold NaN/inf after standardisation; rebuild the features")


def epoch_batches(data: FeatureData, batch_size: int, epoch: int, seed: int = 0, shuffle: bool = True):
    """Batches of one epoch: a seeded permutation, full batches only (same count on every rank)."""
    order = epoch_order(len(data), epoch, seed) if shuffle else torch.arange(len(data))
    for start in range(0, len(data) - batch_size + 1, batch_size):
        idx = order[start:start + batch_size]
        yield data.features[idx], data.observed[idx], data.z[idx]


def eval_batches(data: FeatureData, batch_size: int = 8192):
    for start in range(0, len(data), batch_size):
        yield (data.features[start:start + batch_size], data.observed[start:start + batch_size],
               data.z[start:start + batch_size])


def import_petastorm():
    """petastorm's Spark converter and batched torch loader, or a one-line ConfigError saying how to get them."""
    try:
        with warnings.catch_warnings():  # petastorm 0.12 imports pyarrow's deprecated legacy filesystem
            warnings.simplefilter("ignore", FutureWarning)
            from petastorm.pytorch import BatchedDataLoader
            from petastorm.spark import SparkDatasetConverter, make_spark_converter
    except ImportError as err:
        raise ConfigError(
            f"train.backend=petastorm needs petastorm, which cannot be imported here ({err}); it runs only on "
            f"its own pinned stack: pip install -c {PETASTORM_CONSTRAINTS} -e '.[petastorm]' in a separate venv "
            "(make test-petastorm builds one, .venv-petastorm)") from None
    return SparkDatasetConverter, make_spark_converter, BatchedDataLoader


class PetastormFeed:
    """Reads the train and validation splits through petastorm (the optional extra).

    Made on the driver with ``create`` (Spark writes each split once under ``cache_dir``) and
    pickled to the ranks, which open their readers lazily; ``delete`` on the driver removes
    the materialised data after training.
    """

    SHUFFLE_BATCHES = 16     # row-level shuffling buffer, in batches
    READER_THREADS = 2
    EVAL_BATCH = 8192

    def __init__(self, converters: dict, stats: dict):
        self.converters = converters   # split -> petastorm SparkDatasetConverter (picklable)
        self.stats = stats
        self._loader = None            # this rank's open training loader (context manager)
        self._stream: Iterator | None = None

    @classmethod
    def create(cls, spark, features_dir: str | Path, cache_dir: str | Path, world: int,
               splits: tuple[str, ...] = ("train", "validation")) -> PetastormFeed:
        """Materialise ``splits`` of the features catalog for ``world`` ranks (on the driver)."""
        from pyspark.sql import functions as F

        from photoz_spark.hats import read_hats

        converter_cls, make_spark_converter, _ = import_petastorm()
        cache = Path(cache_dir).resolve()
        cache.mkdir(parents=True, exist_ok=True)
        spark.conf.set(converter_cls.PARENT_CACHE_DIR_URL_CONF, cache.as_uri())
        table = read_hats(spark, features_dir)
        feed = cls({}, read_contract_file(features_dir, STATS_FILE))
        try:
            for split in splits:
                df = table.filter(F.col("split") == split).select(*COLUMNS[:3])
                # petastorm shards by row group and refuses fewer row groups than shards: even files,
                # a few per rank, make the shards about equal.
                files = world * max(4, -(-df.rdd.getNumPartitions() // world))
                feed.converters[split] = make_spark_converter(df.repartition(files), dtype="float32")
        except BaseException:
            feed.delete()
            raise
        return feed

    def delete(self) -> None:
        """Remove the materialised splits (driver, after training)."""
        for converter in self.converters.values():
            converter.delete()

    def _standardised(self, batch: dict, split: str = "train") -> Batch:
        observed = batch["observed"].numpy().astype(bool)  # petastorm hands bools over as uint8
        feats = standardise(batch["features"].numpy(), observed, self.stats)
        out = torch.from_numpy(feats), torch.from_numpy(observed), batch["z_spec"].float()
        bad = count_not_finite(FeatureData(*out))
        if bad:  # the stream is read as it trains: checked batch by batch (a rank's error ends them all)
            raise InputError(not_finite_message(bad, split) + " (in one batch)")
        return out

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int) -> Iterable[Batch]:
        steps = (len(self.converters["train"]) // world) // batch_size
        if self._stream is None:  # one endless reader per rank: a short shard wraps around, never runs dry
            _, _, loader_cls = import_petastorm()
            self._loader = self.converters["train"].make_torch_dataloader(
                batch_size=batch_size, num_epochs=None, cur_shard=rank, shard_count=world, seed=seed,
                shuffling_queue_capacity=self.SHUFFLE_BATCHES * batch_size, workers_count=self.READER_THREADS,
                data_loader_fn=loader_cls)
            self._stream = iter(self._loader.__enter__())
        return (self._standardised(batch) for batch in itertools.islice(self._stream, steps))

    def eval_data(self, split: str, rank: int = 0, world: int = 1) -> FeatureData:
        # Every rank reads the whole split in the same order (one reader thread, row groups in
        # order) and keeps an equal slice, as ArrowFeed does: petastorm's row-group shards are
        # uneven, and unequal validation batch counts would hang DDP's buffer broadcast.
        _, _, loader_cls = import_petastorm()
        with self.converters[split].make_torch_dataloader(
                batch_size=self.EVAL_BATCH, num_epochs=1, workers_count=1, shuffle_row_groups=False,
                data_loader_fn=loader_cls) as loader:
            parts = [self._standardised(batch, split) for batch in loader]
        features, observed, z = (torch.cat(column) for column in zip(*parts))
        n = len(z) // world
        return FeatureData(features[rank * n:(rank + 1) * n], observed[rank * n:(rank + 1) * n],
                           z[rank * n:(rank + 1) * n])

    def close(self) -> None:
        if self._loader is not None:
            self._loader.__exit__(None, None, None)
        self._loader = self._stream = None


def train_redshifts(feed, rank: int, world: int, batch_size: int, seed: int, rows: int = 8192) -> torch.Tensor:
    """This rank's training redshifts, for the mixture head's initial means (``init_head``).

    Args:
        feed: an ArrowFeed (its whole shard, read once and kept for training) or a streamed feed
            (its next ``rows`` or more: the stream is endless and shuffled, so a sample suffices).
        rank, world, batch_size, seed: as ``Feed.train_batches`` (batch_size per rank).
        rows: the sample size of a streamed feed.

    Returns:
        The redshifts [N].
    """
    if isinstance(feed, ArrowFeed):
        return feed.train_data(rank, world).z
    parts, n = [], 0
    while n < rows:
        got = [z for _, _, z in feed.train_batches(0, rank, world, batch_size, seed)]
        if not got:
            break
        for z in got:
            parts.append(z)
            n += len(z)
    return torch.cat(parts) if parts else torch.zeros(0)


# --- placing a rank's training shard on its device ---------------------------------------------

DEVICE_SHARE = 0.5   # a shard goes to the GPU whole if it takes at most this share of the free memory
PREFETCH_BATCHES = 4


def placement(shard_bytes: int, device_type: str, free_bytes: int | None) -> str:
    """Where a rank's training shard lives while it trains.

    Args:
        shard_bytes: the shard's tensors' size.
        device_type: ``cpu`` or ``cuda``.
        free_bytes: free device memory (None: unknown).

    Returns:
        ``device``: moved once to the GPU, permuted and indexed there every epoch (no host work per
        step); ``pinned``: batches gathered on the host by a background thread into pinned memory
        (asynchronous copies), when the shard does not fit; ``host``: plain batches (CPU training).
    """
    if device_type != "cuda":
        return "host"
    if free_bytes is not None and shard_bytes <= DEVICE_SHARE * free_bytes:
        return "device"
    return "pinned"


def shard_bytes(data: FeatureData) -> int:
    return sum(t.element_size() * t.nelement() for t in (data.features, data.observed, data.z))


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The permutation of an epoch: seeded on the CPU, so every placement takes the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def device_epochs(data: FeatureData, device: torch.device, batch_size: int, seed: int) -> Callable[[int], Iterator]:
    """``epoch -> batches`` of a shard moved once to ``device``: each epoch only the permutation is
    copied, and the batches are gathered on the device (the same batches as ``epoch_batches``)."""
    on_device = FeatureData(*(t.to(device) for t in (data.features, data.observed, data.z)))

    def batches(epoch: int) -> Iterator[Batch]:
        order = epoch_order(len(on_device), epoch, seed).to(device, non_blocking=True)
        for start in range(0, len(on_device) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield on_device.features[idx], on_device.observed[idx], on_device.z[idx]

    return batches


def prefetched(batches: Iterable[Batch], depth: int = PREFETCH_BATCHES, pin: bool = False) -> Iterator[Batch]:
    """``batches`` produced by a background thread, ``depth`` ahead (pinned when ``pin``), so the
    host gathers the next batches while the device computes. Same batches, same order; an error in
    the thread is raised here; closing the iterator stops the thread."""
    return background(batches, depth, (lambda batch: tuple(t.pin_memory() for t in batch)) if pin else None,
                      name="photoz-prefetch")


def epoch_source(feed, rank: int, world: int, batch_size: int, seed: int, device: torch.device,
                 how: str | None = None) -> tuple[Callable[[int], Iterable[Batch]], str]:
    """``epoch -> batches`` for a rank, fed the fastest way the device allows (``placement``).

    Args:
        feed: an ArrowFeed (its shard is placed) or another Feed (streamed, prefetched on a GPU).
        rank, world, batch_size, seed: as ``Feed.train_batches`` (batch_size per rank).
        device: the rank's device.
        how: force a placement (tests, benchmarks); None: decided from the shard and free memory.

    Returns:
        (the epoch function, the placement used).
    """
    if not isinstance(feed, ArrowFeed):
        how = how or ("pinned" if device.type == "cuda" else "host")
        if how == "host":
            return (lambda e: feed.train_batches(e, rank, world, batch_size, seed)), how
        return (lambda e: prefetched(feed.train_batches(e, rank, world, batch_size, seed),
                                     pin=device.type == "cuda")), how
    data = feed.train_data(rank, world)
    if how is None:
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        how = placement(shard_bytes(data), device.type, free)
    if how == "device":
        return device_epochs(data, device, batch_size, seed), how
    if how == "pinned":
        return (lambda e: prefetched(epoch_batches(data, batch_size, e, seed), pin=device.type == "cuda")), how
    return (lambda e: epoch_batches(data, batch_size, e, seed)), how
