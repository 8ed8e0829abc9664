"""Which recalibration a model or a score catalog carries, without importing torch.

The fitted calibration lives in ``model.json`` (``model/calibration.from_dict`` applies it); a score
catalog copies it into its HATS properties under ``CALIBRATION_PROPERTY`` so readers such as the qp
export know what the ``mixmod_*`` columns are. Both ask ``method_of``.
"""

from __future__ import annotations

import json

CALIBRATION_PROPERTY = "photoz_calibration"   # score catalogs' properties key ("none" when uncalibrated)


def method_of(stored: dict | None) -> str:
    """none, mixture or pit_map: the recalibration a stored calibration dict describes.

    Args:
        stored: the ``calibration`` entry of ``model.json`` (None or empty when uncalibrated).
    Returns:
        ``"mixture"`` (the mixture columns are the recalibrated PDF), ``"pit_map"`` (they stay the
        network's) or ``"none"``.
    """
    if not stored:
        return "none"
    return "mixture" if stored.get("method") == "mixture" else "pit_map"


def property_value(stored: dict | None) -> str:
    """The ``CALIBRATION_PROPERTY`` value a score catalog records for ``stored``."""
    return json.dumps(stored) if stored else "none"


def from_properties(properties: dict) -> dict | None:
    """The stored calibration a score catalog's properties carry (None when uncalibrated)."""
    value = properties.get(CALIBRATION_PROPERTY, "none")
    return None if value in ("", "none") else json.loads(value)
