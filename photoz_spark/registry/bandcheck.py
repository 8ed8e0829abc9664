"""Scoring refuses a bands file that describes the model's bands otherwise than the model does.

A registered model carries its band definitions (``model.json``: each band's flux and error
columns, error kind and unit, with the unit's value in Jy) and reads a catalog through them. The
bands file a scoring job runs with describes the catalogs the user has. If the two disagree on a
band of the model (W1 in nJy in the bands file, in nanomaggies in the model), the catalog's
numbers would be read in the model's units and shift every redshift: refused in one line, before
any row is read.
"""

from __future__ import annotations

from photoz_spark.bands import BandCatalog
from photoz_spark.errors import InputError

# What a band definition says about a catalog's columns (the rest, filter and wavelength, only
# names the band).
COMPARED = ("catalog", "flux", "err", "err_kind", "unit")


def band_differences(model_bands: BandCatalog, model_set, bands: BandCatalog) -> list[str]:
    """Each disagreement between the model's definitions of its bands and ``bands``.

    Args:
        model_bands: the model's band catalog (``artifact.model_bands``).
        model_set: the model's band set.
        bands: the bands file the job runs with.

    Returns:
        ``"wise_w1 unit nJy (1e-09 Jy) here, nanomaggy (3.631e-06 Jy) in the model"``, one per
        differing field; empty when they agree. A band the bands file does not define is not a
        disagreement (the model's definition is used).
    """
    out = []
    for band in model_set.bands:
        if band.name not in bands.bands:
            continue
        mine = bands.band(band.name)
        for key in COMPARED:
            here, there = getattr(mine, key), getattr(band, key)
            if key == "unit":
                here_jy, there_jy = bands.units.get(here), model_bands.units.get(there)
                if here_jy != there_jy or here != there:
                    out.append(f"{band.name} unit {here} ({here_jy:g} Jy) here, {there} ({there_jy:g} Jy) in the model")
            elif here != there:
                out.append(f"{band.name} {key} {here} here, {there} in the model")
    return out


def check_bands_agree(meta: dict, model_bands: BandCatalog, model_set, bands: BandCatalog, bands_file) -> None:
    """Refuse (one line) a bands file that disagrees with the model's recorded band definitions.

    Args:
        meta: the model's ``model.json``; a model saved without band definitions reads the bands
            file itself, so there is nothing to compare.
        model_bands, model_set: the model's band catalog and band set.
        bands: the job's bands file, loaded.
        bands_file: its path, named in the message.

    Raises:
        InputError: naming every differing band field.
    """
    if "bands" not in meta:
        return
    diff = band_differences(model_bands, model_set, bands)
    if diff:
        raise InputError(f"the bands file {bands_file} disagrees with the model's band definitions: "
                         f"{'; '.join(diff)}: the catalog would be read in the model's columns and units. "
                         "Score with the bands file the model was trained with, or convert the catalog")
