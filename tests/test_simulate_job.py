"""jobs/simulate_sky.py end to end on the shared Spark session, on a one-pixel sky."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from photoz_spark import PROJECT_DIR, hats
from photoz_spark.jobs import simulate_sky
from photoz_spark.sim import run as sim_run

SMALL = ["sim.footprint.radius_deg=0.3", "sim.quasars.density_deg2=600", "sim.field.galaxy_density_deg2=8000",
         "sim.field.star_density_deg2=1000"]


@pytest.fixture(scope="module")
def sky(spark, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sky")
    summary = simulate_sky.main(["--workdir", str(workdir), *SMALL])
    return workdir, summary


def test_catalogs_in_hats_layout_with_native_columns(spark, sky):
    workdir, summary = sky
    for name, columns in {"dr16q": ["THING_ID", "RA", "DEC", "Z", "ZWARNING", "FUV", "FUV_IVAR", "NUV_IVAR"],
                          "sdss": ["objID", "ra", "dec", "psfFlux_u", "psfFluxIvar_z"],
                          "desi_ls": ["LS_ID", "RA", "DEC", "FLUX_G", "FLUX_IVAR_W4", "TYPE"]}.items():
        path = workdir / "catalogs" / name
        files = sorted((path / "dataset").glob("Norder=4/Dir=*/Npix=*.parquet"))
        assert files, name
        props = hats.read_properties(path)
        assert int(props["hats_nrows"]) == summary["rows"][name] > 0
        assert props["photoz_sim_seed"] == "20260101"
        df = hats.read_hats(spark, path)
        assert df.count() == summary["rows"][name]
        assert set(columns) <= set(df.columns)
        ra, dec = ("ra", "dec") if name == "sdss" else ("RA", "DEC")
        sample = df.select(ra, dec, "_healpix_29").limit(500).toPandas()
        np.testing.assert_array_equal(hats.healpix29(sample[ra], sample[dec]), sample["_healpix_29"])
    assert (workdir / "truth" / "sky" / "properties").is_file()
    assert summary["rows"]["truth"] == summary["rows"]["dr16q"]


def test_quasars_are_in_every_catalog_and_truth_links_them(spark, sky):
    workdir, _ = sky
    truth = hats.read_hats(spark, workdir / "truth" / "sky")
    sdss = hats.read_hats(spark, workdir / "catalogs" / "sdss")
    desi = hats.read_hats(spark, workdir / "catalogs" / "desi_ls")
    n = truth.count()
    assert truth.join(sdss, truth.sdss_objID == sdss.objID).count() == n
    assert truth.join(desi, "LS_ID").count() == n
    assert sdss.count() > 3 * n, "field stars and galaxies outnumber the quasars"


def test_colour_figure_written(sky):
    _, summary = sky
    figure = Path(summary["figure"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
    assert summary["stern_fraction_z_lt_3"] > 0.7


def test_rerun_replaces_and_is_identical(spark, sky):
    workdir, summary = sky
    again = simulate_sky.main(["--workdir", str(workdir), *SMALL])
    assert again["rows"] == summary["rows"]
    dr16q = hats.read_hats(spark, workdir / "catalogs" / "dr16q")
    assert dr16q.count() == dr16q.select("THING_ID").distinct().count() == summary["rows"]["dr16q"]
    assert not list(workdir.glob(".simulate-staging-*"))
    assert not list((workdir / "catalogs").glob(".*"))


def test_failed_run_leaves_previous_sky_untouched(spark, sky, monkeypatch):
    workdir, _summary = sky
    before = {p: p.stat().st_mtime_ns for p in (workdir / "catalogs").rglob("*.parquet")}
    calls = []

    def explode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_write(*args, **kwargs)

    real_write = sim_run.hats.write_hats
    monkeypatch.setattr(sim_run.hats, "write_hats", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_sky.main(["--workdir", str(workdir), *SMALL, "sim.seed=99"])
    after = {p: p.stat().st_mtime_ns for p in (workdir / "catalogs").rglob("*.parquet")}
    assert after == before
    assert hats.read_properties(workdir / "catalogs" / "dr16q")["photoz_sim_seed"] == "20260101"
    assert not list(workdir.glob(".simulate-staging-*"))


@pytest.mark.parametrize("override, message", [
    ("sim.nope=1", "unknown config key 'sim.nope'"),
    ("sim.catalogs=[dr16q,gaia]", "allowed: ['dr16q', 'sdss', 'desi_ls', 'lsst']"),
    ("sim.footprint.radius_deg=-1", "radius_deg must be in (0, 180]"),
    ("sim.quasars.density_deg2=lots", "expected float"),
    ("sim.catalog_order=9", "catalog_order <= sim.sim_order"),
    ("sim.quasars.tilt_mean=1.5", "tilt_mean must be in [-1, 1], got 1.5"),
])
def test_bad_settings_refused_with_one_line(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        simulate_sky.main(["--workdir", str(tmp_path), override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "catalogs").exists()


def test_help_explains_the_convention():
    out = subprocess.run([sys.executable, str(PROJECT_DIR / "jobs" / "simulate_sky.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for text in ("--conf", "--workdir", "--master", "key=value", "catalogs/dr16q"):
        assert text in out
