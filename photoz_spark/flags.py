"""Per-row quality flags: one int32 bitmask column ``flags`` that every stage ORs into.

Rows are never dropped for bad data: they carry a flag, and the job summary counts them.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np

FLAGS_COLUMN = "flags"


class Flag(IntFlag):
    BAD_COORDS = 1         # RA outside [0, 360), Dec outside [-90, 90], or NaN: not crossmatched
    DUPLICATE_ID = 2       # the id occurs more than once in the input catalog
    NO_MATCH = 4           # no counterpart within the radius in at least one right catalog
    AMBIGUOUS_MATCH = 8    # more than one candidate within the radius in at least one right catalog
    BAD_FLUX = 16          # a band's flux is NaN or infinite
    BAD_ERROR = 32         # a band's inverse variance <= 0 / NaN, or its sigma <= 0 / NaN
    MISSING_BAND = 64      # at least one band of the band set is not observed
    BAD_REDSHIFT = 128     # z_spec NaN or outside the selected range
    ZWARNING = 256         # the spectroscopic pipeline flagged the redshift
    NOT_SCORED = 512       # no band of the model's band set observed: z_phot_* are NaN (jobs/score_catalog.py)


def count_flags(flags: np.ndarray) -> dict[str, int]:
    """How many rows carry each flag (a row can carry several)."""
    flags = np.asarray(flags, dtype=np.int64)
    return {f.name: int(np.count_nonzero(flags & f.value)) for f in Flag}


def describe(value: int) -> str:
    """'NO_MATCH|MISSING_BAND' for a flags value ('' for 0)."""
    return "|".join(f.name for f in Flag if value & f.value)
