"""A toy matched table for tests and benchmarks of the stages after the crossmatch.

Its fluxes follow a smooth function of redshift through every band of ``conf/bands.yaml``, so a
model can learn z from them in seconds; it is not the simulated sky (``photoz_spark.sim``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from photoz_spark import hats
from photoz_spark.bands import load_bands


def toy_matched_table(n: int, seed: int = 0, ra_range=(150.0, 152.0), dec_range=(1.0, 3.0)) -> pa.Table:
    """n rows in the matched-table layout (DR16Q columns + every band's native columns + flags)."""
    registry = load_bands()
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.2, 4.0, n)
    ra, dec = rng.uniform(*ra_range, n), rng.uniform(*dec_range, n)
    cols = {"THING_ID": np.arange(n, dtype=np.int64) + 1000, "RA": ra, "DEC": dec, "Z": z,
            "ZWARNING": np.zeros(n, np.int32), "SDSS_NAME": [f"J{i:06d}" for i in range(n)],
            "flags": np.zeros(n, np.int32), "_healpix_29": hats.healpix29(ra, dec)}
    for t, band in enumerate(registry.bands.values()):
        level = 10 * (1.5 + np.sin(z * (0.5 + 0.07 * t) + 0.4 * t)) * rng.lognormal(0, 0.05, n)
        cols[band.flux] = level.astype(np.float32)
        err = np.full(n, 0.5, np.float32)
        cols[band.err] = (1 / err ** 2 if band.err_kind == "ivar" else err).astype(np.float32)
    return pa.table(cols)
