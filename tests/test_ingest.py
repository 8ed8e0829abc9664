"""Ingesting real survey products: FITS files in the products' own schemas -> crossmatch -> features."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from photoz_spark import PROJECT_DIR, hats
from photoz_spark.bands import load_bands
from photoz_spark.cli import Workdir
from photoz_spark.config import load_config
from photoz_spark.flags import Flag
from photoz_spark.ingest import IngestError
from photoz_spark.ingest.readers import CsvReader, FitsReader, ParquetReader, find_inputs
from photoz_spark.ingest.run import make_plan
from photoz_spark.ingest.survey_map import available_maps, load_survey_map
from photoz_spark.ingest.transform import ChunkTransformer, IngestStats, choose_order, output_schema
from photoz_spark.jobs import build_features, ingest_catalog
from photoz_spark.jobs import crossmatch as crossmatch_job

REG = load_bands()
ARCSEC = 1 / 3600.0
NMGY_UJY = 3.631  # 1 nanomaggy = 3.631 uJy
N_QSO, N_MATCHED, N_FIELD = 40, 30, 20
BAD_ROWS = (38, 39)  # NaN RA, Dec = 95
LS_RELEASE, BRICKS = 9010, (331234, 331235)


# --- products in their data models' schemas ---------------------------------------------------

def dr16q_columns(rng=None):
    """DR16Q_v4.fits-like columns (names, TFORMs and TUNITs as the data model), known values."""
    rng = rng or np.random.default_rng(1)
    n = N_QSO
    ra, dec = rng.uniform(150.0, 151.0, n), rng.uniform(1.0, 2.0, n)
    ra[BAD_ROWS[0]], dec[BAD_ROWS[1]] = np.nan, 95.0
    psfflux = rng.uniform(2.0, 60.0, (n, 5)).astype(np.float32)
    psfflux[3, 0] = -0.7  # a faint u band: negative fluxes are fine
    galex = np.arange(n) % 2 == 0  # odd rows: no GALEX match, DR16Q stores 0 flux and 0 ivar
    fuv = np.where(galex, rng.uniform(1.0, 5.0, n), 0.0).astype(np.float32)
    return {
        "SDSS_NAME": ("18A", None, np.array([f"J{i:017d}" for i in range(n)])),
        "RA": ("D", "deg", ra), "DEC": ("D", "deg", dec),
        "THING_ID": ("J", None, np.arange(1000, 1000 + n, dtype=np.int32)),
        "Z": ("D", None, rng.uniform(0.5, 3.0, n)),
        "ZWARNING": ("J", None, np.where(np.arange(n) == 5, 4, 0).astype(np.int32)),
        "PSFFLUX": ("5E", "nanomaggies", psfflux),
        "PSFFLUX_IVAR": ("5E", "nanomaggies^-2", rng.uniform(1.0, 4.0, (n, 5)).astype(np.float32)),
        "FUV": ("E", "nanomaggies", fuv), "FUV_IVAR": ("E", "nanomaggies^-2", np.where(galex, 2.0, 0.0)),
        "NUV": ("E", "nanomaggies", fuv * 2), "NUV_IVAR": ("E", "nanomaggies^-2", np.where(galex, 3.0, 0.0)),
    }


def write_fits(path, columns: dict, drop=(), rename=None):
    """A BinTable FITS file from name -> (TFORM, TUNIT, values)."""
    rename = rename or {}
    cols = [fits.Column(name=rename.get(k, k), format=f, unit=u, array=v)
            for k, (f, u, v) in columns.items() if k not in drop]
    fits.BinTableHDU.from_columns(cols).writeto(path, overwrite=True)
    return path


def sweep_columns(qso, brick: int, rows: slice, rng):
    """LS DR9 sweep-like columns: quasars 0..N_MATCHED-1 at 0.3 arcsec, plus field sources."""
    ra_q, dec_q = qso["RA"][2][:N_MATCHED], qso["DEC"][2][:N_MATCHED] + 0.3 * ARCSEC
    ra = np.concatenate([ra_q, rng.uniform(150.0, 151.0, N_FIELD)])[rows]
    dec = np.concatenate([dec_q, rng.uniform(1.0, 2.0, N_FIELD)])[rows]
    n = len(ra)
    cols = {"RELEASE": ("I", None, np.full(n, LS_RELEASE, dtype=np.int16)),
            "BRICKID": ("J", None, np.full(n, brick, dtype=np.int32)),
            "OBJID": ("J", None, np.arange(n, dtype=np.int32)),
            "TYPE": ("3A", None, np.array(["PSF"] * n)),
            "RA": ("D", "deg", ra), "DEC": ("D", "deg", dec)}
    for b in ("G", "R", "Z", "W1", "W2", "W3", "W4"):
        cols[f"FLUX_{b}"] = ("E", "nanomaggy", rng.uniform(1.0, 80.0, n).astype(np.float32))
        cols[f"FLUX_IVAR_{b}"] = ("E", "1/nanomaggy^2", rng.uniform(0.5, 2.0, n).astype(np.float32))
    return cols


def dp1_columns(n=200, rng=None):
    """DP1 Object-like columns: {band}_psfFlux / {band}_psfFluxErr in nJy, over a wide area."""
    rng = rng or np.random.default_rng(5)
    cols = {"objectId": ("K", None, np.arange(n, dtype=np.int64) + 592_000_000_000_000_000),
            "coord_ra": ("D", "deg", rng.uniform(50.0, 70.0, n)),
            "coord_dec": ("D", "deg", rng.uniform(-40.0, -20.0, n))}
    for b in "ugrizy":
        cols[f"{b}_psfFlux"] = ("D", "nJy", rng.normal(3000.0, 2000.0, n))
        cols[f"{b}_psfFluxErr"] = ("D", "nJy", rng.uniform(20.0, 80.0, n))
    return cols


def read_catalog(path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((path / "dataset").rglob("Npix=*.parquet")))


def run_ingest(workdir, *args):
    return ingest_catalog.main(["--workdir", str(workdir), *args])


# --- maps, readers, the transform (no Spark) -------------------------------------------------

def test_every_survey_map_loads_and_writes_bands_yaml_columns():
    maps = {name: load_survey_map(name, REG) for name in available_maps()}
    assert set(maps) >= {"sdss_dr16q", "sdss_dr16", "desi_ls_dr9", "lsst_dp1", "unwise", "galex_guvcat"}
    for smap in maps.values():
        for spec in smap.bands:  # output names are exactly the band's native columns in bands.yaml
            band = REG.band(spec.band.name)
            assert band.flux in smap.output_columns and band.err in smap.output_columns
    assert [b.band.name for b in maps["lsst_dp1"].bands] == list(REG.band_sets["ugrizy"])
    assert maps["sdss_dr16q"].output_columns[6:8] == ["psfFlux_u", "psfFluxIvar_u"]
    assert maps["unwise"].catalog.name == "unwise" and maps["galex_guvcat"].catalog.id == "OBJID"


def test_fits_reader_streams_bounded_chunks_and_keeps_array_columns(tmp_path):
    path = write_fits(tmp_path / "DR16Q_v4.fits", dr16q_columns())
    reader = FitsReader(path, chunk_rows=15)
    described = reader.describe()
    assert described["PSFFLUX"].width == 5 and described["PSFFLUX"].unit == "nanomaggies"
    assert described["THING_ID"].type == pa.int32() and described["SDSS_NAME"].type == pa.string()
    batches = list(reader.batches(["PSFFLUX", "SDSS_NAME"]))
    assert [b.num_rows for b in batches] == [15, 15, 10]
    expected = dr16q_columns()["PSFFLUX"][2]
    got = np.concatenate([np.stack(b.column("PSFFLUX").to_numpy(zero_copy_only=False)) for b in batches])
    np.testing.assert_array_equal(got, expected)
    assert batches[2].column("SDSS_NAME")[0].as_py() == "J00000000000000030"  # trailing blanks trimmed


def test_csv_and_parquet_readers(tmp_path):
    table = pa.table({"objID": np.arange(25, dtype=np.int64), "ra": np.linspace(0, 1, 25),
                      "psfFlux_u": [1] * 24 + [2.5]})  # an int-looking first block, a float later
    pacsv.write_csv(table, tmp_path / "sdss.csv")
    pq.write_table(table, tmp_path / "sdss.parquet")
    csv = CsvReader(tmp_path / "sdss.csv", chunk_rows=10)
    rows = list(csv.batches(["objID", "psfFlux_u"], {"psfFlux_u": pa.float64()}))
    assert [b.num_rows for b in rows] == [10, 10, 5] and rows[2].column("psfFlux_u")[4].as_py() == 2.5
    parquet = ParquetReader(tmp_path / "sdss.parquet", chunk_rows=10)
    assert set(parquet.describe()) == {"objID", "ra", "psfFlux_u"}
    assert sum(b.num_rows for b in parquet.batches(["ra"])) == 25
    assert find_inputs(str(tmp_path)) == [tmp_path / "sdss.csv", tmp_path / "sdss.parquet"]
    assert find_inputs(str(tmp_path / "*.parquet")) == [tmp_path / "sdss.parquet"]


def _transform(survey, table: pa.Table, **kw):
    smap = load_survey_map(survey, REG)
    resolved = {c: c for c in smap.source_columns() if c in table.column_names}
    schema = output_schema(smap, set(table.column_names))
    stats = IngestStats()
    out, _ = ChunkTransformer(smap, REG, resolved, schema, kw.get("bad_coords", "keep"), True, stats)(
        table.to_batches()[0], "test")
    return out, stats


def test_guvcat_microjansky_to_nanomaggy_ivar_and_sentinels_to_nulls():
    table = pa.table({"OBJID": [1, 2, 3], "RA": [10.0, 10.1, 10.2], "DEC": [-5.0, -5.1, -5.2],
                      "FUV_FLUX": [3.631, -999.0, 7.262], "FUV_FLUXERR": [0.3631, -999.0, 0.0],
                      "NUV_FLUX": [36.31, 1.0, 1.0], "NUV_FLUXERR": [1.8155, 0.5, 0.5]})
    out, _ = _transform("galex_guvcat", table)
    assert out.column("FUV").to_pylist() == pytest.approx([1.0, None, 2.0], nan_ok=True)
    fuv_ivar = out.column("FUV_IVAR").to_pylist()
    assert fuv_ivar[0] == pytest.approx(100.0) and fuv_ivar[1] is None and np.isnan(fuv_ivar[2])  # sigma 0: BAD_ERROR
    assert out.column("NUV").to_pylist()[0] == pytest.approx(10.0)
    assert out.column("NUV_IVAR").to_pylist()[0] == pytest.approx(4.0)


def test_unwise_vega_nanomaggies_become_ab():
    table = pa.table({"unwise_objid": ["0001p000o0000001"], "ra": [1.0], "dec": [0.5],
                      "flux": pa.array([[100.0, 100.0]], pa.list_(pa.float32(), 2)),
                      "dflux": pa.array([[2.0, 4.0]], pa.list_(pa.float32(), 2))})
    out, _ = _transform("unwise", table)
    w1, w2 = 10 ** (-0.4 * REG.band("wise_w1").vega_to_ab), 10 ** (-0.4 * REG.band("wise_w2").vega_to_ab)
    assert out.column("FLUX_W1")[0].as_py() == pytest.approx(100.0 * w1, rel=1e-6)
    assert out.column("FLUX_IVAR_W1")[0].as_py() == pytest.approx(1 / (2.0 * w1) ** 2, rel=1e-6)
    assert out.column("FLUX_W2")[0].as_py() == pytest.approx(100.0 * w2, rel=1e-6)
    assert out.column("FLUX_IVAR_W2")[0].as_py() == pytest.approx(1 / (4.0 * w2) ** 2, rel=1e-6)


def test_bad_coordinates_kept_and_flagged_or_dropped():
    ra, dec = [10.0, np.nan, 360.0, 20.0], [0.0, 0.0, 0.0, -90.5]
    table = pa.table({"OBJID": [1, 2, 3, 4], "RA": ra, "DEC": dec, "FUV_FLUX": [1.0] * 4, "FUV_FLUXERR": [1.0] * 4,
                      "NUV_FLUX": [1.0] * 4, "NUV_FLUXERR": [1.0] * 4})
    kept, stats = _transform("galex_guvcat", table)
    assert kept.column("flags").to_pylist() == [0] + [int(Flag.BAD_COORDS)] * 3
    assert kept.column("_healpix_29").to_pylist()[1:] == [0, 0, 0] and stats.bad_coords == 3
    dropped, stats = _transform("galex_guvcat", table, bad_coords="drop")
    assert dropped.column("OBJID").to_pylist() == [1] and stats.dropped == 3 and stats.rows_read == 4
    with pytest.raises(IngestError, match="3 rows with RA/Dec"):
        _transform("galex_guvcat", table, bad_coords="error")


def test_choose_order_is_the_smallest_under_the_limit():
    counts = np.zeros(12 * 4**3, dtype=np.int64)
    counts[0], counts[1], counts[700] = 40, 40, 10  # pixels 0 and 1 share their order-2 parent
    assert choose_order(counts, 3, 100) == (0, 80)
    assert choose_order(counts, 3, 79) == (3, 40)
    assert choose_order(counts, 3, 30) == (3, 40)  # the finest allowed, even if still over


# --- the paper's case: DR16Q + LS DR9 sweeps -> crossmatch -> features -----------------------

@pytest.fixture(scope="module")
def paper(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    workdir = root / "workdir"
    qso = dr16q_columns()
    write_fits(root / "DR16Q_v4.fits", qso)
    sweeps = root / "sweeps"
    sweeps.mkdir()
    first = sweep_columns(qso, BRICKS[0], slice(0, 25), np.random.default_rng(3))
    second = sweep_columns(qso, BRICKS[1], slice(25, 50), np.random.default_rng(3))
    write_fits(sweeps / "sweep-150p000-155p005.fits", first)
    # The second file as a tractor catalog: lower-case names and no TYPE column.
    write_fits(sweeps / "sweep-150p005-155p010.fits", second, drop=("TYPE",),
               rename={k: k.lower() for k in second})
    s_q = run_ingest(workdir, "--input", str(root / "DR16Q_v4.fits"), "--survey", "sdss_dr16q", "ingest.chunk_rows=16")
    s_ls = run_ingest(workdir, "--input", str(sweeps / "sweep-*.fits"), "--survey", "desi_ls_dr9")
    s_xm = crossmatch_job.main(["--workdir", str(workdir), "crossmatch.right=[desi_ls]"])
    s_f = build_features.main(["--workdir", str(workdir), "--band-set", "all14"])
    return {"workdir": workdir, "qso": qso, "sweeps": (first, second), "ingest": (s_q, s_ls), "xm": s_xm,
            "features": s_f}


def test_ingest_dr16q_splits_psfflux_and_keeps_bad_rows(paper):
    s_q, _ = paper["ingest"]
    assert s_q["rows_read"] == s_q["rows_written"] == N_QSO and s_q["bad_coords"] == 2
    # 40 rows fit the default partition size: order 0, the quasars' pixel and pixel 0 (the bad rows')
    assert s_q["order"] == 0 and s_q["partitions"] == 2
    out = read_catalog(paper["workdir"] / "catalogs" / "dr16q").sort_by("THING_ID")
    qso = paper["qso"]
    np.testing.assert_array_equal(out["psfFlux_r"].to_numpy(), qso["PSFFLUX"][2][:, 2])
    np.testing.assert_array_equal(out["psfFluxIvar_z"].to_numpy(), qso["PSFFLUX_IVAR"][2][:, 4])
    assert out["THING_ID"].type == pa.int64() and out["SDSS_NAME"][3].as_py() == "J00000000000000003"
    flags = out["flags"].to_numpy()
    assert np.flatnonzero(flags & Flag.BAD_COORDS).tolist() == list(BAD_ROWS)
    props = hats.read_properties(paper["workdir"] / "catalogs" / "dr16q")
    assert props["hats_nrows"] == "40" and props["photoz_ingest_survey"] == "sdss_dr16q"


def test_ingest_sweeps_from_a_glob_computes_ls_id(paper):
    _, s_ls = paper["ingest"]
    assert s_ls["rows_read"] == 50 and len(s_ls["files"]) == 2 and s_ls["bad_coords"] == 0
    out = read_catalog(paper["workdir"] / "catalogs" / "desi_ls")
    expected = {(LS_RELEASE << 40) | (BRICKS[k] << 16) | i for k, n in ((0, 25), (1, 25)) for i in range(n)}
    assert set(out["LS_ID"].to_pylist()) == expected
    types = dict(zip(out["BRICKID"].to_pylist(), out["TYPE"].to_pylist(), strict=True))
    assert types[BRICKS[0]] == "PSF" and types[BRICKS[1]] is None  # the tractor-like file has no TYPE


def test_crossmatch_finds_the_sweep_counterparts(paper, spark):
    s_xm = paper["xm"]
    assert s_xm["rows_in"] == s_xm["rows_out"] == N_QSO
    assert s_xm["per_catalog"]["desi_ls"]["matched"] == N_MATCHED
    out = read_catalog(paper["workdir"] / "matched" / "dr16q").sort_by("THING_ID")
    ids = out["desi_ls_id"].to_pylist()
    for i in range(N_MATCHED):  # quasar i is row i of the sweeps: file 0 rows 0..24, file 1 rows 0..4
        assert ids[i] == (LS_RELEASE << 40) | (BRICKS[i // 25] << 16) | (i % 25)
    assert ids[N_MATCHED:] == [None] * (N_QSO - N_MATCHED)
    first, _ = paper["sweeps"]
    assert out["FLUX_W2"][7].as_py() == first["FLUX_W2"][2][7]
    assert out["psfFlux_u"][3].as_py() == pytest.approx(-0.7)
    assert np.all(out["flags"].to_numpy()[list(BAD_ROWS)] & Flag.BAD_COORDS)


def test_features_count_the_observed_bands(paper):
    s_f = paper["features"]
    assert s_f["rows_in"] == s_f["rows_out"] == N_QSO
    out = read_catalog(paper["workdir"] / "features" / "all14").sort_by("id")
    idx = np.arange(N_QSO)
    galex = 2 * (idx % 2 == 0)  # FUV and NUV where DR16Q has a GALEX match
    expected = 5 + galex + np.where(idx < N_MATCHED, 7, 0)  # SDSS from DR16Q, DESI + WISE from the sweeps
    np.testing.assert_array_equal(out["n_observed"].to_numpy(), expected)
    features = np.stack(out["features"].to_numpy(zero_copy_only=False))
    sdss_u = REG.band_set("all14").names.index("sdss_u")
    np.testing.assert_allclose(features[:, 2 * sdss_u], paper["qso"]["PSFFLUX"][2][:, 0] * NMGY_UJY, rtol=1e-6)
    assert s_f["observed_fraction"]["galex_fuv"] == pytest.approx(0.5)
    assert s_f["observed_fraction"]["desi_g"] == pytest.approx(N_MATCHED / N_QSO)


def test_rerun_replaces_the_catalog(paper, tmp_path):
    workdir = paper["workdir"]
    write_fits(tmp_path / "DR16Q_small.fits", {k: (f, u, v[:10]) for k, (f, u, v) in dr16q_columns().items()})
    again = run_ingest(workdir, "--input", str(tmp_path / "DR16Q_small.fits"), "--survey", "sdss_dr16q",
                       "--name", "dr16q_small")
    assert again["rows_written"] == 10 and read_catalog(workdir / "catalogs" / "dr16q_small").num_rows == 10
    assert not list(workdir.glob(".ingest-staging-*"))


# --- LSST DP1, unWISE, GUVcat, an existing HATS catalog --------------------------------------

def test_dp1_object_table_ingests_in_nanojansky_with_adaptive_partitions(spark, tmp_path):
    cols = dp1_columns()
    write_fits(tmp_path / "dp1_object.fits", cols)
    s = run_ingest(tmp_path / "w", "--input", str(tmp_path / "dp1_object.fits"), "--survey", "lsst_dp1",
                   "ingest.max_rows_per_partition=30", "ingest.chunk_rows=64")
    assert s["rows_written"] == 200 and s["order"] >= 2 and s["largest_partition"] <= 30
    files = list((tmp_path / "w" / "catalogs" / "lsst" / "dataset").rglob("Npix=*.parquet"))
    assert len(files) == s["partitions"] > 1 and max(pq.read_metadata(f).num_rows for f in files) <= 30
    assert all(f"Norder={s['order']}" in str(f) for f in files)
    out = read_catalog(tmp_path / "w" / "catalogs" / "lsst").sort_by("objectId")
    np.testing.assert_allclose(out["g_psfFlux"].to_numpy(), cols["g_psfFlux"][2], rtol=1e-6)  # nJy stays nJy
    np.testing.assert_allclose(out["y_psfFluxErr"].to_numpy(), cols["y_psfFluxErr"][2], rtol=1e-6)


def test_sdss_csv_and_parquet_files_of_a_folder_ingest_together(spark, tmp_path):
    rng = np.random.default_rng(6)
    n = 30
    folder = tmp_path / "casjobs"
    folder.mkdir()
    tables = []
    for k in range(2):
        tables.append(pa.table({"objID": np.arange(n, dtype=np.int64) + 1_237_650_000_000_000_000 + k * n,
                                "ra": rng.uniform(180, 181, n), "dec": rng.uniform(10, 11, n),
                                **{f"psfFlux{s}_{b}": rng.normal(20, 15, n) for b in "ugriz" for s in ("", "Ivar")}}))
    pacsv.write_csv(tables[0], folder / "photoprimary_1.csv")
    pq.write_table(tables[1], folder / "photoprimary_2.parquet")
    s = run_ingest(tmp_path / "w", "--input", str(folder), "--survey", "sdss_dr16")
    assert s["rows_written"] == 2 * n and len(s["files"]) == 2
    out = read_catalog(tmp_path / "w" / "catalogs" / "sdss").sort_by("objID")
    expected = np.concatenate([t["psfFlux_g"].to_numpy() for t in tables])
    np.testing.assert_allclose(out["psfFlux_g"].to_numpy(), expected, rtol=1e-6)
    assert "type" not in out.column_names  # optional, and in none of these files


def test_unwise_and_guvcat_fits_ingest_into_their_own_catalogs(spark, tmp_path):
    n = 6
    write_fits(tmp_path / "0001p000.cat.fits", {
        "unwise_objid": ("16A", None, np.array([f"0001p000o{i:07d}" for i in range(n)])),
        "ra": ("D", "deg", np.linspace(0.5, 0.6, n)), "dec": ("D", "deg", np.linspace(0.1, 0.2, n)),
        "flux": ("2E", "nanomaggies", np.full((n, 2), 50.0)), "dflux": ("2E", "nanomaggies", np.full((n, 2), 5.0)),
        "primary": ("B", None, np.ones(n, dtype=np.uint8))})
    write_fits(tmp_path / "GUVcat_AIS.fits", {
        "OBJID": ("K", None, np.arange(n, dtype=np.int64) + 6_371_000_000_000_000_000),
        "RA": ("D", "deg", np.linspace(0.5, 0.6, n)), "DEC": ("D", "deg", np.linspace(0.1, 0.2, n)),
        "FUV_FLUX": ("E", "microJy", np.array([3.631, -999, 3.631, 3.631, 3.631, 3.631])),
        "FUV_FLUXERR": ("E", "microJy", np.array([0.3631, -999, 0.3631, 0.3631, 0.3631, 0.3631])),
        "NUV_FLUX": ("E", "microJy", np.full(n, 7.262)), "NUV_FLUXERR": ("E", "microJy", np.full(n, 0.3631))})
    s_w = run_ingest(tmp_path / "w", "--input", str(tmp_path / "0001p000.cat.fits"), "--survey", "unwise")
    s_g = run_ingest(tmp_path / "w", "--input", str(tmp_path / "GUVcat_AIS.fits"), "--survey", "galex_guvcat")
    assert s_w["rows_written"] == s_g["rows_written"] == n
    wise = read_catalog(tmp_path / "w" / "catalogs" / "unwise")
    assert wise["FLUX_W1"][0].as_py() == pytest.approx(50.0 * 10 ** (-0.4 * 2.699), rel=1e-6)
    assert wise["primary"].type == pa.int64()
    galex = read_catalog(tmp_path / "w" / "catalogs" / "galex").sort_by("OBJID")
    assert galex["FUV"].to_pylist()[:3] == pytest.approx([1.0, None, 1.0], nan_ok=True)
    assert galex["NUV_IVAR"][0].as_py() == pytest.approx(100.0) and galex["NUV"][0].as_py() == pytest.approx(2.0)
    # As README "Your own data" says: a bands file whose W1/W2 and FUV/NUV live in these catalogs.
    text = (PROJECT_DIR / "conf" / "bands.yaml").read_text().splitlines()
    moved = [line.replace("catalog: desi_ls", "catalog: unwise") if line.startswith(("  wise_w1:", "  wise_w2:"))
             else line.replace("catalog: dr16q", "catalog: galex") if line.startswith("  galex_") else line
             for line in text]
    (tmp_path / "my_bands.yaml").write_text("\n".join(moved) + "\n")
    ra, dec = np.linspace(0.5, 0.6, n)[[0, 1, 3]], np.linspace(0.1, 0.2, n)[[0, 1, 3]] + 0.2 * ARCSEC
    hats.write_hats_table(pa.table({"THING_ID": np.arange(3, dtype=np.int64), "RA": ra, "DEC": dec,
                                    "_healpix_29": hats.healpix29(ra, dec)}),
                          tmp_path / "w" / "catalogs" / "dr16q", order=3, ra_col="RA", dec_col="DEC",
                          catalog_name="dr16q")
    s_xm = crossmatch_job.main(["--workdir", str(tmp_path / "w"), f"bands_file={tmp_path / 'my_bands.yaml'}",
                                "crossmatch.right=[unwise,galex]"])
    assert s_xm["per_catalog"]["unwise"]["matched"] == s_xm["per_catalog"]["galex"]["matched"] == 3
    out = read_catalog(tmp_path / "w" / "matched" / "dr16q").sort_by("THING_ID")
    assert out["unwise_id"].to_pylist() == ["0001p000o0000000", "0001p000o0000001", "0001p000o0000003"]
    assert out["FUV"].to_pylist() == pytest.approx([1.0, None, 1.0], nan_ok=True)
    assert out["FLUX_W2"][2].as_py() == pytest.approx(50.0 * 10 ** (-0.4 * 3.339), rel=1e-6)


def test_existing_hats_catalog_is_validated_and_linked(spark, tmp_path):
    # As hats-import writes one: properties, dataset/Norder=K/Dir=D/Npix=N.parquet, _healpix_29.
    rng = np.random.default_rng(9)
    n = 50
    table = pa.table({"objectId": np.arange(n, dtype=np.int64), "coord_ra": rng.uniform(0, 40, n),
                      "coord_dec": rng.uniform(-30, 0, n),
                      **{f"{b}_psfFlux{s}": rng.uniform(1, 9, n) for b in "ugrizy" for s in ("", "Err")}})
    table = table.append_column("_healpix_29", pa.array(hats.healpix29(table["coord_ra"], table["coord_dec"])))
    source = tmp_path / "dp1_hats"
    hats.write_hats_table(table, source, order=2, ra_col="coord_ra", dec_col="coord_dec", catalog_name="dp1")
    before = sorted(p.stat().st_mtime_ns for p in source.rglob("*.parquet"))
    s = run_ingest(tmp_path / "w", "--input", str(source), "--survey", "lsst_dp1")
    target = tmp_path / "w" / "catalogs" / "lsst"
    assert s["mode"] == "linked" and s["rows_read"] == n and s["order"] == 2 and s["bad_coords"] == 0
    assert target.is_symlink() and target.resolve() == source.resolve()
    assert hats.read_hats(spark, target).count() == n  # Spark reads through the link
    assert sorted(p.stat().st_mtime_ns for p in source.rglob("*.parquet")) == before  # nothing rewritten
    # Without the pipeline's columns it is refused, pointing at the rewrite mode.
    hats.write_hats_table(table.drop_columns(["y_psfFluxErr"]), tmp_path / "partial", order=1,
                          ra_col="coord_ra", dec_col="coord_dec", catalog_name="partial")
    with pytest.raises(IngestError, match="no column 'y_psfFluxErr'.*hats_input=rewrite"):
        make_plan(_cfg(input=str(tmp_path / "partial"), survey="lsst_dp1"), REG, Workdir(tmp_path / "w"))


# --- bad input -------------------------------------------------------------------------------

def _cfg(**ingest):
    return {**load_config("ingest.yaml")["ingest"], **ingest}


def _fails(capsys, workdir, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        run_ingest(workdir, *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not (workdir / "catalogs").exists() or not any((workdir / "catalogs").iterdir())
    assert not list(workdir.glob(".ingest-staging-*")) if workdir.exists() else True
    return err


def test_missing_column_named_with_its_file(tmp_path, capsys):
    path = write_fits(tmp_path / "DR16Q_v4.fits", dr16q_columns(), drop=("NUV_IVAR",))
    err = _fails(capsys, tmp_path / "w", "--input", str(path), "--survey", "sdss_dr16q")
    assert str(path) in err and "'NUV_IVAR'" in err
    # ... unless that band is left out.
    plan = make_plan(_cfg(input=str(path), survey="sdss_dr16q", bands=["sdss_u", "galex_fuv"]), REG,
                     Workdir(tmp_path / "w"))
    assert plan.schema.names[6:10] == ["psfFlux_u", "psfFluxIvar_u", "FUV", "FUV_IVAR"]


def test_magnitudes_refused_by_unit_and_by_value(tmp_path, capsys):
    cols = dr16q_columns()
    cols["FUV"] = ("E", "mag", cols["FUV"][2])
    err = _fails(capsys, tmp_path / "w", "--input", str(write_fits(tmp_path / "a.fits", cols)), "--survey", "sdss_dr16q")
    assert "a.fits" in err and "'FUV'" in err and "magnitudes" in err
    rng = np.random.default_rng(4)
    n = 120
    table = pa.table({"objID": np.arange(n), "ra": rng.uniform(0, 1, n), "dec": rng.uniform(0, 1, n),
                      **{f"psfFlux{s}_{b}": rng.uniform(16, 23, n) if not s else np.ones(n)
                         for b in "ugriz" for s in ("", "Ivar")}})
    pacsv.write_csv(table, tmp_path / "sdss_mags.csv")
    err = _fails(capsys, tmp_path / "w", "--input", str(tmp_path / "sdss_mags.csv"), "--survey", "sdss_dr16")
    assert "sdss_mags.csv" in err and "psfFlux_u" in err and "holds magnitudes" in err


def test_coordinates_in_another_unit_refused(tmp_path):
    cols = dr16q_columns()
    cols["DEC"] = ("D", "rad", np.radians(cols["DEC"][2]))
    path = write_fits(tmp_path / "DR16Q_rad.fits", cols)
    with pytest.raises(IngestError, match="DR16Q_rad.fits: column 'DEC' is in 'rad'; the survey map expects 'deg'"):
        make_plan(_cfg(input=str(path), survey="sdss_dr16q"), REG, Workdir(tmp_path / "w"))


def test_truncated_and_malformed_files_named_nothing_written(tmp_path, capsys):
    path = write_fits(tmp_path / "DR16Q_v4.fits", dr16q_columns())
    data = path.read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) - 2880 - 500])
    err = _fails(capsys, tmp_path / "w", "--input", str(tmp_path / "cut.fits"), "--survey", "sdss_dr16q")
    assert "cut.fits" in err and "truncated" in err
    (tmp_path / "junk.fits").write_bytes(b"SIMPLE  = this is not FITS" * 10)
    err = _fails(capsys, tmp_path / "w", "--input", str(tmp_path / "junk.fits"), "--survey", "sdss_dr16q")
    assert "junk.fits" in err
    err = _fails(capsys, tmp_path / "w", "--input", str(tmp_path / "nothing-*.fits"), "--survey", "sdss_dr16q")
    assert "no catalog files" in err


def test_bad_settings_refused_with_one_line(tmp_path, capsys):
    path = write_fits(tmp_path / "DR16Q_v4.fits", dr16q_columns())
    assert "available: " in _fails(capsys, tmp_path / "w", "--input", str(path), "--survey", "dr99")
    assert "ingest.bad_coords" in _fails(capsys, tmp_path / "w", "--input", str(path), "--survey", "sdss_dr16q",
                                         "ingest.bad_coords=ignore")
    assert "ingest.bands" in _fails(capsys, tmp_path / "w", "--input", str(path), "--survey", "sdss_dr16q",
                                    "ingest.bands=[lsst_u]")
    assert "ingest.input is empty" in _fails(capsys, tmp_path / "w", "--survey", "sdss_dr16q")


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        ingest_catalog.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--input", "--survey", "--name", "conf/ingest.yaml"))


def test_summary_is_json_serialisable(paper):
    json.dumps(paper["ingest"][0])


# --- own data: a plain spec-z table, any --name, non-detections (#19 item 0) -------------------

def test_dp1_nan_flux_without_error_is_null_not_a_bad_measurement():
    nan = np.nan
    table = pa.table({"objectId": [1, 2, 3], "coord_ra": [10.0, 10.1, 10.2], "coord_dec": [-5.0, -5.1, -5.2],
                      **{f"{b}_psfFlux": [100.0, nan, nan] for b in "ugrizy"},
                      **{f"{b}_psfFluxErr": [10.0, nan, 10.0] for b in "ugrizy"}})
    out, _ = _transform("lsst_dp1", table)
    assert out.column("g_psfFlux").to_pylist()[:2] == [100.0, None]          # not measured: null, as unmatched
    assert out.column("g_psfFluxErr").to_pylist()[:2] == [10.0, None]
    assert np.isnan(out.column("g_psfFlux")[2].as_py()) and out.column("g_psfFluxErr")[2].as_py() == 10.0
    from photoz_spark.features.sequencing import sequence

    _, observed, flags = sequence(out, REG.band_set("ugrizy"), REG)
    assert observed.sum(axis=1).tolist() == [6, 0, 0]
    assert flags.tolist() == [0, int(Flag.MISSING_BAND), int(Flag.MISSING_BAND | Flag.BAD_FLUX)]


def test_specz_map_renames_columns_from_the_command_line(spark, tmp_path):
    n = 40
    rng = np.random.default_rng(8)
    pq.write_table(pa.table({"TARGETID": np.arange(n, dtype=np.int64) + 39_000, "ra": rng.uniform(150, 151, n),
                             "dec": rng.uniform(2, 3, n), "Z_SPEC": rng.uniform(0.1, 4.0, n),
                             "ZWARN": np.where(np.arange(n) < 5, 4, 0)}), tmp_path / "specz.parquet")
    s = run_ingest(tmp_path / "w", "--input", str(tmp_path / "specz.parquet"), "--survey", "specz",
                   "--name", "my_specz", "ingest.columns={id: TARGETID, z: Z_SPEC}", "ingest.columns.zwarning=ZWARN")
    assert s["rows_written"] == n and s["columns"] == ["id", "ra", "dec", "z", "zwarning", "flags", "_healpix_29"]
    out = read_catalog(tmp_path / "w" / "catalogs" / "my_specz").sort_by("id")
    assert out["id"].to_pylist()[:2] == [39_000, 39_001] and out["zwarning"].to_pylist()[:6] == [4] * 5 + [0]
    props = hats.read_properties(tmp_path / "w" / "catalogs" / "my_specz")
    assert props["photoz_catalog"] == "specz" and props["photoz_bands"] == "none"
    assert props["obs_collection"] == "my_specz"
    assert REG.resolve_catalog("my_specz", props).z == "z" and REG.bands_of("my_specz", props) == []


def test_a_rename_the_map_does_not_read_is_one_line(tmp_path, capsys):
    pq.write_table(pa.table({"id": [1], "ra": [1.0], "dec": [1.0], "z": [1.0]}), tmp_path / "s.parquet")
    err = _fails(capsys, tmp_path / "w", "--input", str(tmp_path / "s.parquet"), "--survey", "specz",
                 "ingest.columns.redshift=Z")
    assert "ingest.columns: ['redshift'] not read by survey map 'specz', which reads: id, ra, dec, z, zwarning" in err


def test_catalog_under_any_name_records_what_it_is(spark, tmp_path):
    write_fits(tmp_path / "dp1_object.fits", dp1_columns(50))
    run_ingest(tmp_path / "w", "--input", str(tmp_path / "dp1_object.fits"), "--survey", "lsst_dp1",
               "--name", "lsst_test", "ingest.bands=[lsst_g,lsst_r,lsst_i]")
    props = hats.read_properties(tmp_path / "w" / "catalogs" / "lsst_test")
    assert props["photoz_catalog"] == "lsst" and props["photoz_bands"] == "lsst_g lsst_r lsst_i"
    assert REG.resolve_catalog("lsst_test", props).id == "objectId"
    assert [b.name for b in REG.bands_of("lsst_test", props)] == ["lsst_g", "lsst_r", "lsst_i"]
    with pytest.raises(ValueError, match="catalog 'lsst_test' is not under 'catalogs'"):
        REG.resolve_catalog("lsst_test", {"obs_collection": "lsst_test"})
