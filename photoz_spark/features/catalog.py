"""The features catalog contract, read in one place: ``layout.json``, ``stats.json`` and the dataset.

``jobs/build_features.py`` writes ``features/<band_set>/`` (a HATS catalog with a ``split``
column) plus the two JSON files. Training (``train.feeding.ArrowFeed``), evaluation and the
ablation all open it through ``FeaturesCatalog``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from photoz_spark.errors import MissingInput
from photoz_spark.features.build import list_matrix
from photoz_spark.hats import DATASET_DIR, read_schema

LAYOUT_FILE = "layout.json"
STATS_FILE = "stats.json"


def read_contract_file(directory: str | Path, name: str) -> dict:
    """One JSON file of a features catalog (LAYOUT_FILE or STATS_FILE).

    Raises:
        MissingInput: the file is missing (the features were not built).
    """
    path = Path(directory) / name
    if not path.is_file():
        raise MissingInput(f"no features at {Path(directory)} ({name} missing): "
                           "run jobs/build_features.py --band-set <band set>")
    return json.loads(path.read_text())


class FeaturesCatalog:
    """A features catalog with its split column, read lazily (columns pruned, split filtered)."""

    def __init__(self, directory: str | Path):
        """Open ``directory``; raises MissingInput when it holds no layout.json."""
        self.directory = Path(directory)
        self.layout = read_contract_file(self.directory, LAYOUT_FILE)
        # The recorded schema, not the files': a catalog with no rows (an empty crossmatch's) has no
        # data file, and a filter on ``split`` must still find the column (and count 0).
        self.dataset = ds.dataset(self.directory / DATASET_DIR, format="parquet", exclude_invalid_files=True,
                                  schema=read_schema(self.directory))

    @cached_property
    def stats(self) -> dict:
        """The training split's standardisation statistics (stats.json)."""
        return read_contract_file(self.directory, STATS_FILE)

    @property
    def width(self) -> int:
        return self.layout["n_steps"] * self.layout["n_channels"]

    def count(self, split: str) -> int:
        return self.dataset.count_rows(filter=pc.field("split") == split)

    def batches(self, split: str, batch_size: int):
        """(raw features [B, T*C], observed [B, T], z_spec [B]) numpy batches of ``split``."""
        for batch in self.dataset.to_batches(columns=["features", "observed", "z_spec"],
                                             filter=pc.field("split") == split, batch_size=batch_size):
            if batch.num_rows:
                yield (list_matrix(batch["features"], self.width, np.float32),
                       list_matrix(batch["observed"], self.layout["n_steps"], bool),
                       batch["z_spec"].to_numpy().astype(np.float32))

    def id_splits(self):
        """The (id, split) columns of every row, for comparing split assignments."""
        return self.dataset.to_table(columns=["id", "split"])

    def row_groups(self) -> list:
        """The dataset's row groups as pyarrow fragments, in the dataset's row order (files, then
        row groups): the unit a training rank reads. Footers only, no data."""
        return [group for fragment in self.dataset.get_fragments() for group in fragment.split_by_row_group()]

    @staticmethod
    def split_counts(groups: list, split: str, indices: Sequence[int]) -> np.ndarray:
        """Rows of ``split`` in the row groups ``indices`` of ``groups`` (0 for the others): reads
        only the ``split`` column of those row groups."""
        counts = np.zeros(len(groups), np.int64)
        for i in indices:
            counts[i] = groups[i].count_rows(filter=pc.field("split") == split)
        return counts

    def read_shard(self, groups: list, slices: list[tuple[int, int, int]], split: str,
                   columns: list[str]) -> pa.Table:
        """The rows ``slices`` (``shard_slices``) of ``split``: only the row groups they name are read."""
        parts = [groups[g].to_table(columns=columns, filter=pc.field("split") == split).slice(lo, hi - lo)
                 for g, lo, hi in slices]
        if not parts:
            return self.dataset.schema.empty_table().select(columns)
        return pa.concat_tables(parts)


def shard_slices(counts: Sequence[int], rank: int, world: int) -> list[tuple[int, int, int]]:
    """Which rows of a split ``rank`` of ``world`` reads: the contiguous range
    [rank * n, (rank + 1) * n) of the split's rows in dataset order, n = rows // world (every
    rank gets as many rows: DDP needs equal step counts; the last rows // world remainder is dropped).

    Args:
        counts: the split's rows in each row group, in dataset order.
        rank, world: this rank and the number of ranks.

    Returns:
        (row group, first, end) triples, offsets among that row group's rows of the split.
    """
    n = int(sum(counts)) // world
    lo, hi = rank * n, (rank + 1) * n
    slices, offset = [], 0
    for group, count in enumerate(counts):
        first, end = max(lo, offset), min(hi, offset + int(count))
        if end > first:
            slices.append((group, first - offset, end - offset))
        offset += int(count)
    return slices
