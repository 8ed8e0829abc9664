"""Deterministic train/validation/test assignment from a 64-bit hash of each row's id.

The split of a row depends on its id and the seed only: the same on every run, on any number
of partitions or machines, and duplicated ids always land in the same split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from photoz_spark.errors import InputError

SPLITS = ("train", "validation", "test")
EXCLUDED = "excluded"  # rows that are written but not used (bad redshift, ZWARNING, incomplete)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of uint64 values (wraps modulo 2**64, as in the reference C)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _string_keys(values) -> np.ndarray:
    # blake2b of the UTF-8 bytes: unlike Python's hash(), the same in every process.
    out = np.empty(len(values), dtype=np.uint64)
    for i, value in enumerate(values):
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        out[i] = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return out


def _id_keys(ids) -> np.ndarray:
    """uint64 keys of integer ids (their two's-complement bits) or string ids (a hash)."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_integer(ids.type):
            ids = pc.fill_null(ids, 0).to_numpy()  # a null id hashes like id 0
        else:
            ids = np.asarray(pc.fill_null(ids.cast(pa.string()), "").to_pylist(), dtype=object)
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64).view(np.uint64)
    if ids.dtype.kind in "USO":
        return _string_keys(ids)
    raise TypeError(f"ids must be integers or strings, got dtype {ids.dtype}")


def hash_ids(ids, seed: int = 0) -> np.ndarray:
    """A 64-bit hash of each id, salted by ``seed``.

    Args:
        ids: integer or string ids (numpy array, list, or pyarrow array).
        seed: any integer; a different seed gives an independent assignment.

    Returns:
        uint64 array of hashes.
    """
    salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return splitmix64(_id_keys(ids) ^ salt)


def check_fractions(fractions) -> tuple[float, float, float]:
    """Three non-negative fractions that sum to 1, or a ValueError saying so."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise InputError(f"split fractions ({', '.join(SPLITS)}) must be 3 values >= 0 summing to 1, "
                         f"got {fractions}")
    return fractions


def assign_split(ids, fractions=(0.70, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Assign each id to "train", "validation" or "test".

    Args:
        ids: integer or string ids (numpy array, list, or pyarrow array).
        fractions: the expected shares of train, validation and test (sum 1).
        seed: salts the hash.

    Returns:
        Array of split names, one per id.
    """
    cumulative = np.cumsum(check_fractions(fractions))
    # The top 53 bits as a uniform double in [0, 1).
    uniform = (hash_ids(ids, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    index = np.minimum(np.searchsorted(cumulative, uniform, side="right"), len(SPLITS) - 1)
    return np.asarray(SPLITS)[index]
