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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.compute as pc
import torch

from photoz_spark.config import ConfigError
from photoz_spark.features.build import list_matrix
from photoz_spark.features.catalog import STATS_FILE, FeaturesCatalog, read_contract_file
from photoz_spark.features.stats import standardise

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
    """Reads one split of a features dataset with pyarrow.dataset, sharded evenly by rank."""

    def __init__(self, features_dir: str | Path):
        self.features_dir = Path(features_dir)
        catalog = FeaturesCatalog(self.features_dir)
        self.layout, self.stats, self.dataset = catalog.layout, catalog.stats, catalog.dataset
        self._train: dict[tuple[int, int], FeatureData] = {}

    @property
    def width(self) -> int:
        return self.layout["n_steps"] * self.layout["n_channels"]

    def count(self, split: str) -> int:
        return self.dataset.count_rows(filter=pc.field("split") == split)

    def load(self, split: str, rank: int = 0, world: int = 1) -> FeatureData:
        """The split's rows for ``rank`` of ``world``: equal sizes (the remainder is dropped)."""
        table = self.dataset.to_table(columns=COLUMNS[:3], filter=pc.field("split") == split)
        n = len(table) // world if world > 1 else len(table)
        table = table.slice(rank * n, n)
        observed = list_matrix(table["observed"], self.layout["n_steps"], bool)
        raw = list_matrix(table["features"], self.width, np.float32)
        feats = standardise(raw, observed, self.stats)
        return FeatureData(torch.from_numpy(feats), torch.from_numpy(observed),
                           torch.from_numpy(table["z_spec"].to_numpy().astype(np.float32)))

    def train_batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int) -> Iterable[Batch]:
        if (rank, world) not in self._train:  # read once, reshuffled every epoch
            self._train[(rank, world)] = self.load("train", rank, world)
        return epoch_batches(self._train[(rank, world)], batch_size, epoch, seed)

    def eval_data(self, split: str, rank: int = 0, world: int = 1) -> FeatureData:
        return self.load(split, rank, world)

    def close(self) -> None:
        self._train.clear()


def epoch_batches(data: FeatureData, batch_size: int, epoch: int, seed: int = 0, shuffle: bool = True):
    """Batches of one epoch: a seeded permutation, full batches only (same count on every rank)."""
    order = (torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
             if shuffle else torch.arange(len(data)))
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

    def _standardised(self, batch: dict) -> Batch:
        observed = batch["observed"].numpy().astype(bool)  # petastorm hands bools over as uint8
        feats = standardise(batch["features"].numpy(), observed, self.stats)
        return torch.from_numpy(feats), torch.from_numpy(observed), batch["z_spec"].float()

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
            parts = [self._standardised(batch) for batch in loader]
        features, observed, z = (torch.cat(column) for column in zip(*parts))
        n = len(z) // world
        return FeatureData(features[rank * n:(rank + 1) * n], observed[rank * n:(rank + 1) * n],
                           z[rank * n:(rank + 1) * n])

    def close(self) -> None:
        if self._loader is not None:
            self._loader.__exit__(None, None, None)
        self._loader = self._stream = None
