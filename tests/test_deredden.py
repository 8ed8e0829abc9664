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


# --- end to end on the simulated sky: simulate -> crossmatch -> build_features (#20) -------------

SKY = ["sim.footprint.radius_deg=0.3", "sim.quasars.density_deg2=600", "sim.field.galaxy_density_deg2=8000",
       "sim.field.star_density_deg2=1000", "sim.figure=false"]


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    from photoz_spark.jobs import build_features, crossmatch, simulate_sky

    workdir = tmp_path_factory.mktemp("deredden")
    simulate_sky.main(["--workdir", str(workdir), *SKY])
    crossmatch.main(["--workdir", str(workdir)])
    for name, switch in (("plain", "false"), ("dered", "true")):
        build_features.main(["--workdir", str(workdir), "--band-set", "all14", "--output", name,
                             f"features.deredden={switch}"])
    return workdir


def _features(workdir, name):
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(workdir / "features" / name / "dataset", partitioning=None).sort_by("id")
    return table["id"].to_numpy(), np.stack(table["features"].to_numpy(zero_copy_only=False)).reshape(
        table.num_rows, 14, 2)


def test_deredden_end_to_end_scales_fluxes_by_the_catalogs_own_extinction(built, registry):
    import json

    import numpy as np
    import pyarrow.parquet as pq

    ids, plain = _features(built, "plain")
    same_ids, dered = _features(built, "dered")
    np.testing.assert_array_equal(ids, same_ids)
    matched = pq.read_table(built / "matched" / "dr16q" / "dataset", partitioning=None).sort_by("THING_ID")
    np.testing.assert_array_equal(matched["THING_ID"].to_numpy(), ids)
    bands = registry.band_set("all14")
    checked = 0
    for t, band in enumerate(bands.bands):
        found = registry.extinction_column(band.name)
        ratio = dered[:, t, :] / plain[:, t, :]  # flux and its error scale alike
        ok = np.isfinite(ratio[:, 0]) & (plain[:, t, 0] != 0)
        if found is None:  # GALEX in DR16Q: no column, left alone
            np.testing.assert_array_equal(ratio[ok], 1.0)
            continue
        column, kind = found
        value = matched[column].to_numpy(zero_copy_only=False).astype(float)
        expected = 1.0 / value if kind == "transmission" else 10.0 ** (0.4 * value)
        assert ok.sum() > 300 and np.all(expected[ok] > 1.0), band.name  # dust everywhere on this sky
        np.testing.assert_allclose(ratio[ok, 0], expected[ok], rtol=2e-6, err_msg=band.name)
        np.testing.assert_allclose(ratio[ok, 1], expected[ok], rtol=2e-6, err_msg=band.name)
        checked += 1
    assert checked == 12  # SDSS u..z (extinction_*), DESI g r z and W1-W4 (MW_TRANSMISSION_*)
    layout = json.loads((built / "features" / "dered" / "layout.json").read_text())
    assert layout["deredden"][:2] == ["extinction_u", "extinction_g"] and "MW_TRANSMISSION_W4" in layout["deredden"]
    assert "deredden" not in json.loads((built / "features" / "plain" / "layout.json").read_text())
