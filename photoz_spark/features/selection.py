"""Which rows have a spectroscopic redshift good enough to train and evaluate on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from photoz_spark.features.sequencing import float_values
from photoz_spark.flags import Flag


def _floats(values) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return float_values(values)[0]  # nulls -> NaN
    return np.asarray(values, dtype=np.float64)


def select(z, zwarning=None, z_max: float = 5.0,
           require_zwarning_zero: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Select rows by spectroscopic redshift quality.

    Args:
        z: spectroscopic redshifts (numpy or pyarrow; null or NaN is bad).
        zwarning: the pipeline's warning bits (0 = fine; null counts as a warning), or None
            when the catalog has none.
        z_max: the highest redshift accepted.
        require_zwarning_zero: exclude rows whose zwarning is not 0 (they are flagged either way).

    Returns:
        selected: bool [N]; flags: int32 [N] with BAD_REDSHIFT (NaN, negative or above z_max)
        and ZWARNING (nonzero or null zwarning).
    """
    z = _floats(z)
    bad_z = ~(z >= 0.0) | (z > z_max)  # NaN fails every comparison
    warned = np.zeros(len(z), dtype=bool) if zwarning is None else ~(_floats(zwarning) == 0)
    flags = (np.where(bad_z, Flag.BAD_REDSHIFT, 0) | np.where(warned, Flag.ZWARNING, 0)).astype(np.int32)
    selected = ~bad_z & ~(warned & require_zwarning_zero)
    return selected, flags
