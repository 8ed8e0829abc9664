"""features.deredden: Milky Way correction from the extinction columns bands.yaml names."""

import pyarrow as pa
import pytest

from photoz_spark.bands import load_bands
from photoz_spark.features.build import FeatureSpec
from photoz_spark.features.extinction import deredden, extinction_columns
from photoz_spark.features.run import check_input


@pytest.fixture(scope="module")
def registry():
    return load_bands()


def _batch():
    return pa.table({"FLUX_G": pa.array([10.0, 10.0, None], pa.float32()),
                     "FLUX_IVAR_G": pa.array([4.0, 4.0, 4.0], pa.float32()),
                     "MW_TRANSMISSION_G": pa.array([0.9, 1.0, 0.9], pa.float32()),
                     "psfFlux_u": pa.array([5.0, 5.0, 5.0], pa.float32()),
                     "psfFluxIvar_u": pa.array([1.0, 1.0, 1.0], pa.float32()),
                     "extinction_u": pa.array([0.2, 0.0, 0.2], pa.float32()),
                     "FUV": pa.array([1.0, 1.0, 1.0], pa.float32()),
                     "FUV_IVAR": pa.array([1.0, 1.0, 1.0], pa.float32())})


def test_deredden_divides_by_transmission_and_adds_back_extinction(registry):
    bands = registry.band_set(["galex_fuv", "sdss_u", "desi_g"])
    assert extinction_columns(bands, registry) == ["extinction_u", "MW_TRANSMISSION_G"]
    out = deredden(_batch(), bands, registry).to_pydict()
    assert out["FLUX_G"][:2] == pytest.approx([10.0 / 0.9, 10.0], rel=1e-6)
    assert out["FLUX_G"][2] is None                                     # a missing flux stays missing
    assert out["FLUX_IVAR_G"][0] == pytest.approx(4.0 * 0.9 ** 2, rel=1e-6)  # S/N unchanged
    assert out["psfFlux_u"][0] == pytest.approx(5.0 * 10 ** 0.08, rel=1e-6)
    assert out["FUV"] == [1.0, 1.0, 1.0]                                # no column: left alone


def test_deredden_needs_its_columns(registry):
    spec = FeatureSpec(band_set=registry.band_set(["sdss_u", "desi_g"]), registry=registry, id_column="THING_ID",
                       ra_column="RA", dec_column="DEC", z_column="Z", zwarning_column="", deredden=True)
    assert "MW_TRANSMISSION_G" in spec.input_columns()
    schema = pa.schema([(c, pa.float64()) for c in ("FLUX_G", "FLUX_IVAR_G", "psfFlux_u", "psfFluxIvar_u", "RA",
                                                    "DEC", "Z")] + [("THING_ID", pa.int64()), ("_healpix_29", pa.int64())])
    with pytest.raises(ValueError, match="extinction_u.*Milky Way"):
        check_input(schema, spec, "matched")
    off = FeatureSpec(**{**spec.__dict__, "deredden": False})
    check_input(schema, off, "matched")                                  # off by default: not needed
