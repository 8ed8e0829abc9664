"""Feature sequencing: the pure functions on hand-made values, then jobs/build_features.py end to end."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from photoz_spark import hats
from photoz_spark.bands import load_bands
from photoz_spark.features import (
    EXCLUDED,
    FeatureSpec,
    assign_split,
    combine_moments,
    compute_stats,
    feature_batch,
    moments,
    output_schema,
    select,
    sequence,
    standardise,
    stats_from_moments,
)
from photoz_spark.flags import Flag
from photoz_spark.jobs import build_features

REG = load_bands()
MISSING, BAD_FLUX, BAD_ERROR = int(Flag.MISSING_BAND), int(Flag.BAD_FLUX), int(Flag.BAD_ERROR)


def one_band(band: str, flux, err) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = REG.band(band)
    table = pa.table({b.flux: pa.array(flux, pa.float32()), b.err: pa.array(err, pa.float32())})
    return sequence(table, REG.band_set([band]), REG)


# --- sequence ----------------------------------------------------------------------------------

def test_units_are_microjansky():
    features, observed, flags = one_band("sdss_g", [1.0, 2.0], [1.0, 4.0])  # nanomaggy, ivar
    np.testing.assert_array_equal(features, np.float32([[3.631, 3.631], [7.262, 3.631 / 2]]))
    assert observed.all() and not flags.any()
    features, _, _ = one_band("lsst_g", [1000.0, 3631.0], [10.0, 0.5])  # nJy, sigma
    np.testing.assert_array_equal(features, np.float32([[1.0, 0.01], [3.631, 0.0005]]))


def test_all14_order_is_wavelength_with_sdss_before_desi():
    band_set = REG.band_set("all14")
    names = band_set.names
    assert names[:3] == ["galex_fuv", "galex_nuv", "sdss_u"] and names[-4:] == ["wise_w1", "wise_w2", "wise_w3",
                                                                                 "wise_w4"]
    assert names.index("sdss_g") < names.index("desi_g") < names.index("sdss_r")
    # Each band's flux is its position in bands.yaml's band list: the sequence must come out sorted.
    table = pa.table({c: [float(i) if c == b.flux else 1.0] for i, b in enumerate(band_set.bands)
                      for c in (b.flux, b.err)})
    features, observed, _ = sequence(table, REG.band_set(list(reversed(names))), REG)
    assert features.shape == (1, 28) and observed.all()
    np.testing.assert_allclose(features[0, ::2], np.arange(14) * 3.631, rtol=1e-6)


def test_lsst_ugrizy_needs_no_code():
    band_set = REG.band_set("ugrizy")
    flux = {"u": 100.0, "g": 200.0, "r": 300.0, "i": 400.0, "z": 500.0, "y": 600.0}  # nJy
    table = pa.table({**{f"{k}_psfFlux": [v, v] for k, v in flux.items()},
                      **{f"{k}_psfFluxErr": [10.0, np.nan] for k in flux}, "objectId": [1, 2]})
    features, observed, flags = sequence(table, band_set, REG)
    assert band_set.names == ["lsst_u", "lsst_g", "lsst_r", "lsst_i", "lsst_z", "lsst_y"]
    np.testing.assert_allclose(features[0], np.ravel([[v / 1000, 0.01] for v in flux.values()]), rtol=1e-6)
    assert observed[0].all() and flags[0] == 0
    assert not observed[1].any() and flags[1] == BAD_ERROR | MISSING


@pytest.mark.parametrize("band, flux, err, is_observed, flags", [
    ("galex_fuv", 5.0, 4.0, True, 0),
    ("galex_fuv", 0.0, 0.0, False, MISSING),                 # DR16Q: no GALEX match
    ("galex_fuv", 5.0, 0.0, False, MISSING),                 # ivar 0 = no measurement, whatever the flux
    ("galex_fuv", None, None, False, MISSING),               # unmatched in the crossmatch
    ("galex_fuv", np.nan, 4.0, False, BAD_FLUX | MISSING),
    ("galex_fuv", np.inf, 4.0, False, BAD_FLUX | MISSING),
    ("galex_fuv", 5.0, -1.0, False, BAD_ERROR | MISSING),
    ("galex_fuv", 5.0, np.nan, False, BAD_ERROR | MISSING),
    ("galex_fuv", 5.0, np.inf, False, BAD_ERROR | MISSING),
    ("galex_fuv", 5.0, None, False, BAD_ERROR | MISSING),
    ("lsst_g", -50.0, 20.0, True, 0),                        # negative fluxes are measurements
    ("lsst_g", 50.0, 0.0, False, BAD_ERROR | MISSING),       # sigma 0 is never valid
    ("lsst_g", 50.0, -2.0, False, BAD_ERROR | MISSING),
    ("lsst_g", np.nan, np.nan, False, MISSING),              # DP1: NaN flux and error = not measured
    ("lsst_g", np.nan, None, False, MISSING),
    ("lsst_g", np.nan, 20.0, False, BAD_FLUX | MISSING),     # a NaN flux with an error is a bad one
])
def test_missing_and_bad_measurements(band, flux, err, is_observed, flags):
    features, observed, got = one_band(band, [flux], [err])
    assert observed[0, 0] == is_observed and got[0] == flags
    assert np.isfinite(features).all() if is_observed else np.isnan(features).all()


# --- split, selection, statistics ---------------------------------------------------------------

def test_split_fractions_stable_and_partition_independent():
    ids = np.arange(100_000, dtype=np.int64) * 7919 + 12345
    split = assign_split(ids)
    for name, fraction in {"train": 0.70, "validation": 0.15, "test": 0.15}.items():
        assert abs(np.mean(split == name) - fraction) < 0.01
    np.testing.assert_array_equal(split, assign_split(ids))
    np.testing.assert_array_equal(split, np.concatenate([assign_split(c) for c in np.array_split(ids, 7)]))
    np.testing.assert_array_equal(split[:1000], assign_split(pa.array(ids[:1000])))
    assert np.mean(split != assign_split(ids, seed=1)) > 0.3
    names = [f"J{i:06d}" for i in range(20_000)]
    by_name = assign_split(names)
    assert abs(np.mean(by_name == "train") - 0.70) < 0.015
    np.testing.assert_array_equal(by_name[::-1], assign_split(names[::-1]))
    with pytest.raises(ValueError, match="summing to 1"):
        assign_split(ids, fractions=(0.8, 0.15, 0.15))


def test_select_flags_redshift_and_zwarning():
    z = pa.array([1.0, np.nan, -0.1, 5.5, 2.0, None, 5.0])
    selected, flags = select(z, pa.array([0, 0, 0, 0, 4, 0, None]), z_max=5.0)
    np.testing.assert_array_equal(selected, [True, False, False, False, False, False, False])
    bad_z, warn = int(Flag.BAD_REDSHIFT), int(Flag.ZWARNING)
    np.testing.assert_array_equal(flags, [0, bad_z, bad_z, bad_z, warn, bad_z, warn])
    selected, flags = select(z, pa.array([0, 0, 0, 0, 4, 0, 0]), require_zwarning_zero=False)
    assert selected[4] and flags[4] == warn


def random_features(n, n_steps, seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(1e4, 3.0, (n, n_steps * 2)).astype(np.float32)  # large mean, small spread
    observed = rng.random((n, n_steps)) < 0.8
    features.reshape(n, n_steps, 2)[~observed] = np.nan
    return features, observed, rng.random(n) < 0.7


def test_stats_combine_exactly_and_equal_numpy():
    band_set = REG.band_set("optical8")
    features, observed, train = random_features(3000, 8, seed=3)
    chunks = np.array_split(np.arange(3000), [5, 900, 901, 2200])  # uneven, one of a single row
    combined = moments(features[:0], observed[:0])
    for rows in chunks:
        combined = combine_moments(combined, moments(features[rows], observed[rows], train[rows]))
    stats = stats_from_moments(combined, band_set)
    assert stats == json.loads(json.dumps(stats))
    assert stats["bands"] == band_set.names and stats["channels"] == ["flux", "flux_err"] and stats["unit"] == "uJy"
    whole = compute_stats(features, observed, band_set, train)
    np.testing.assert_array_equal(stats["count"], whole["count"])
    values = features.reshape(3000, 8, 2).astype(np.float64)
    for t in range(8):
        for c in range(2):
            x = values[train & observed[:, t], t, c]
            assert stats["count"][t][c] == len(x)
            np.testing.assert_allclose(stats["mean"][t][c], x.mean(), rtol=1e-13)
            np.testing.assert_allclose(stats["std"][t][c], x.std(), rtol=1e-9)
            np.testing.assert_allclose(whole["std"][t][c], x.std(), rtol=1e-9)


def test_standardise_round_trip():
    band_set = REG.band_set("desi_wise7")
    features, observed, _ = random_features(500, 7, seed=4)
    stats = compute_stats(features, observed, band_set)
    scaled = standardise(features, observed, stats)
    assert scaled.dtype == np.float32 and np.isfinite(scaled).all()
    steps = scaled.reshape(500, 7, 2)
    assert (steps[~observed] == 0).all()
    np.testing.assert_allclose(steps[observed].mean(axis=0), 0.0, atol=0.1)
    back = steps * np.asarray(stats["std"]) + np.asarray(stats["mean"])
    np.testing.assert_allclose(back[observed], features.reshape(500, 7, 2)[observed], rtol=1e-6)


def test_luptitude_of_known_fluxes():
    from photoz_spark.features.stats import luptitude

    # 3631 uJy is AB 15.0; far above the softening the luptitude is the magnitude
    assert luptitude(3631.0, 1.0) == pytest.approx(15.0, abs=1e-6)
    # at zero flux: m_0 = -2.5 log10(b / 3631 Jy), finite; b = 1 uJy -> 23.9 (lit. 1.0857 * ... )
    assert luptitude(0.0, 1.0) == pytest.approx(-2.5 * np.log10(1e-6 / 3631), abs=1e-9)
    assert luptitude(0.0, 1.0) == pytest.approx(23.9, abs=1e-3)
    # negative fluxes give fainter (larger) but finite values, monotone in flux
    values = luptitude(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]), 1.0)
    assert np.isfinite(values).all() and (np.diff(values) < 0).all()


def test_softening_from_the_sky_noise_and_asinh_standardise():
    band_set = REG.band_set("desi_wise7")
    rng = np.random.default_rng(7)
    n = 4000
    sigma = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0])          # per-band sky noise, uJy
    flux = rng.lognormal(1.0, 1.5, (n, 7)) * sigma + rng.normal(0, 1, (n, 7)) * sigma
    flux[:5] = 0.0                                                     # zero and negative fluxes
    flux[5:10] = -3 * sigma
    features = np.stack([flux, np.broadcast_to(sigma, (n, 7))], -1).reshape(n, 14).astype(np.float32)
    observed = np.ones((n, 7), dtype=bool)
    observed[10:20, 2] = False
    stats = compute_stats(features, observed, band_set, representation="asinh_mag")
    assert stats["representation"] == "asinh_mag"
    # one error value per band: b = 1.042 sigma exactly
    np.testing.assert_allclose(stats["softening"], 1.042 * sigma, rtol=1e-6)
    x = standardise(features, observed, stats).reshape(n, 7, 2)
    assert np.isfinite(x).all() and (x[10:20, 2] == 0).all()
    assert x[0, 0, 0] == 0.0                                           # asinh(0) at zero flux
    np.testing.assert_allclose(x[5:10, :, 0], np.arcsinh(-3 / 2.084), rtol=1e-5)
    np.testing.assert_allclose(x[0, :, 1], 1 / 2.084, rtol=1e-5)       # sigma / 2b at zero flux
    # the same features with the default representation are the standardised fluxes
    assert compute_stats(features, observed, band_set)["representation"] == "flux"
    with pytest.raises(ValueError, match="representation must be one of flux, asinh_mag, auto"):
        compute_stats(features, observed, band_set, representation="mag")


def test_auto_representation_is_asinh_only_when_a_band_is_noise_dominated():
    band_set = REG.band_set("ugrizy")
    rng = np.random.default_rng(3)
    n = 2000
    sigma = np.full(6, 0.1)                                            # uJy
    flux = rng.lognormal(np.log(20.0), 0.5, (n, 6)) * sigma           # mean ~23 sigma = 22 b in every band
    observed = np.ones((n, 6), dtype=bool)

    def stats_of(f):
        x = np.stack([f, np.broadcast_to(sigma, f.shape)], -1).reshape(n, 12).astype(np.float32)
        return compute_stats(x, observed, band_set, representation="auto")

    deep = stats_of(flux)
    assert deep["representation"] == "flux"
    assert deep["faintest_band"][0].startswith("lsst_") and 15 < deep["faintest_band"][1] < 30
    shallow = flux.copy()
    shallow[:, 5] = rng.normal(0.4, 1.0, n) * sigma[5]                # y: mean 0.4 sigma, noise-dominated
    chosen = stats_of(shallow)
    assert chosen["representation"] == "asinh_mag"
    assert chosen["faintest_band"][0] == "lsst_y" and abs(chosen["faintest_band"][1] - 0.4 / 1.042) < 0.1
    # the rule's edge: 4.5 b is noise-dominated, 5.5 b is not
    for mean_b, expected in ((4.5, "asinh_mag"), (5.5, "flux")):
        edge = flux.copy()
        edge[:, 5] = mean_b * 1.042 * sigma[5] + rng.normal(0, 0.01, n) * sigma[5]
        assert stats_of(edge)["representation"] == expected, mean_b


# --- the job ---------------------------------------------------------------------------------

def matched_table(n: int = 1200, seed: int = 5) -> pa.Table:
    """A DR16Q x SDSS x DESI-LS matched table as the crossmatch writes it, with known defects."""
    rng = np.random.default_rng(seed)
    ra, dec = 150 + rng.uniform(-2, 2, n), 30 + rng.uniform(-2, 2, n)
    z = rng.uniform(0.2, 4.5, n)
    z[:6] = [np.nan, -0.5, 5.5, 6.0, np.nan, 7.0]
    cols = {"THING_ID": np.arange(n, dtype=np.int64) * 3 + 10**9, "RA": ra, "DEC": dec, "Z": z,
            "ZWARNING": np.where(rng.random(n) < 0.05, 4, 0).astype(np.int32),
            "SDSS_NAME": [f"J{i:06d}" for i in range(n)]}
    flags = np.zeros(n, dtype=np.int32)
    galex = rng.random(n) < 0.75
    for catalog in ("dr16q", "sdss", "desi_ls"):
        matched = galex if catalog == "dr16q" else rng.random(n) < 0.95
        if catalog != "dr16q":
            cols[f"{catalog}_id"] = pa.array(np.arange(n, dtype=np.int64), mask=~matched)
            cols[f"{catalog}_sep_arcsec"] = pa.array(rng.uniform(0, 1, n), mask=~matched)
            cols[f"{catalog}_n_candidates"] = matched.astype(np.int32)
            flags |= np.where(matched, 0, Flag.NO_MATCH).astype(np.int32)
        for band in REG.catalog_bands(catalog):
            flux = rng.lognormal(2.0, 1.0, n).astype(np.float32)
            ivar = (1.0 / (0.05 * flux + 0.3) ** 2).astype(np.float32)
            if catalog == "dr16q":  # no GALEX match: flux 0, ivar 0
                cols[band.flux], cols[band.err] = np.where(matched, flux, 0), np.where(matched, ivar, 0)
            else:
                cols[band.flux], cols[band.err] = pa.array(flux, mask=~matched), pa.array(ivar, mask=~matched)
    r = cols["psfFlux_r"]  # row 10: a matched row with a NaN flux; unmatched rows stay null
    cols["psfFlux_r"] = pa.array(np.where(np.arange(n) == 10, np.nan, r.to_numpy(zero_copy_only=False)),
                                 pa.float32(), mask=r.is_null().to_numpy(zero_copy_only=False))
    cols["flags"], cols["_healpix_29"] = flags, hats.healpix29(ra, dec)
    return pa.table(cols)


def test_feature_batch_without_spark_keeps_a_string_id():
    table = matched_table(40)
    spec = FeatureSpec(band_set=REG.band_set("sdss_wise9"), registry=REG, id_column="SDSS_NAME", ra_column="RA",
                       dec_column="DEC", z_column="Z", zwarning_column="", z_max=5.0)
    out = feature_batch(table, spec, output_schema(spec, table.schema))
    assert out.schema.field("id").type == pa.string() and out.column("id").to_pylist() == table["SDSS_NAME"].to_pylist()
    assert out.num_rows == 40 and set(pc.list_value_length(out.column("features")).to_pylist()) == {18}
    np.testing.assert_array_equal(out.column("split").to_pylist()[6:], assign_split(table["SDSS_NAME"][6:]))


def write_matched(workdir, table):
    return hats.write_hats_table(table, workdir / "matched" / "dr16q", order=5, ra_col="RA", dec_col="DEC",
                                 catalog_name="dr16q")


def read_output(workdir, band_set="all14"):
    return pa.concat_tables(pq.read_table(p) for p in
                            sorted((workdir / "features" / band_set / "dataset").rglob("Npix=*.parquet")))


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("features")
    table = matched_table()
    write_matched(workdir, table)
    summary = build_features.main(["--workdir", str(workdir)])
    return workdir, table, summary


def test_job_writes_one_feature_row_per_input_row(built):
    workdir, table, summary = built
    out = read_output(workdir)
    assert summary["rows_in"] == summary["rows_out"] == out.num_rows == table.num_rows
    assert summary["partitions"] > 1
    assert out.column_names == ["id", "THING_ID", "ra", "dec", "z_spec", "split", "features", "observed",
                                "n_observed", "flags", "_healpix_29"]
    assert out.schema.field("id").type == pa.int64() and out.schema.field("features").type.value_type == pa.float32()
    assert set(pc.list_value_length(out["features"]).to_pylist()) == {28}
    assert set(pc.list_value_length(out["observed"]).to_pylist()) == {14}
    # The job's rows are exactly what the pure function gives on the input rows.
    out = out.sort_by("id")
    features, observed, _ = sequence(table, REG.band_set("all14"), REG)
    got = np.stack(out["features"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(features))
    np.testing.assert_array_equal(got[~np.isnan(got)], features[~np.isnan(features)])
    np.testing.assert_array_equal(np.stack(out["observed"].to_numpy(zero_copy_only=False)), observed)


def test_job_flags_splits_and_summary(built):
    workdir, table, summary = built
    out = read_output(workdir).sort_by("id")
    flags, split = out["flags"].to_numpy(), np.asarray(out["split"].to_pylist())
    assert (flags & Flag.NO_MATCH).sum() == (table["flags"].to_numpy() & Flag.NO_MATCH).sum() > 0
    assert flags[10] & Flag.BAD_FLUX
    assert set(split[:6]) == {EXCLUDED} and (flags[:6] & Flag.BAD_REDSHIFT).all()
    warned = table["ZWARNING"].to_numpy() != 0
    assert (split[warned] == EXCLUDED).all()
    excluded = summary["excluded_by_reason"]
    assert excluded["bad_redshift"] == 6 and excluded["zwarning"] == warned[6:].sum() and excluded["incomplete"] == 0
    assert sum(summary["splits"].values()) == table.num_rows
    assert summary["splits"][EXCLUDED] == (split == EXCLUDED).sum()
    assert abs(summary["splits"]["train"] / (split != EXCLUDED).sum() - 0.70) < 0.05
    assert 0.7 < summary["observed_fraction"]["galex_fuv"] < 0.8 and summary["observed_fraction"]["sdss_u"] > 0.9
    assert summary["flagged"]["MISSING_BAND"] == (out["n_observed"].to_numpy() < 14).sum()
    assert table["psfFlux_r"].null_count > 0 and summary["flagged"]["BAD_FLUX"] == 1  # nulls are only missing
    assert summary["flagged"]["BAD_ERROR"] == 0  # GALEX flux 0 / ivar 0 is missing, not a bad error
    props = hats.read_properties(workdir / "features" / "all14")
    assert props["photoz_band_set"] == "all14" and props["photoz_bands"].split()[3:6] == ["sdss_g", "desi_g", "sdss_r"]
    assert props["photoz_unit"] == "uJy" and props["photoz_split_seed"] == "0"
    layout = json.loads((workdir / "features" / "all14" / "layout.json").read_text())
    assert layout["n_steps"] == 14 and layout["channels"] == ["flux", "flux_err"] and layout["id_column"] == "THING_ID"


def test_stats_json_is_from_the_training_rows_only(built):
    workdir, _, _ = built
    stats = json.loads((workdir / "features" / "all14" / "stats.json").read_text())
    out = read_output(workdir)
    train = np.asarray(out["split"].to_pylist()) == "train"
    features = np.stack(out["features"].to_numpy(zero_copy_only=False))[train]
    observed = np.stack(out["observed"].to_numpy(zero_copy_only=False))[train]
    expected = compute_stats(features, observed, REG.band_set("all14"))
    assert stats["n_rows"] == train.sum() and stats["bands"] == expected["bands"]
    np.testing.assert_array_equal(stats["count"], expected["count"])
    np.testing.assert_allclose(stats["mean"], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(stats["std"], expected["std"], rtol=1e-9)


def test_rerun_replaces_and_require_complete_excludes(built):
    workdir, _, first = built
    again = build_features.main(["--workdir", str(workdir), "--require-complete", "features.split.seed=3"])
    out = read_output(workdir)
    complete = out["n_observed"].to_numpy() == 14
    split = np.asarray(out["split"].to_pylist())
    assert (split[~complete] == EXCLUDED).all() and (split[complete] != EXCLUDED).any()
    assert again["excluded_by_reason"]["incomplete"] == (~complete).sum() > 0
    assert again["rows_out"] == first["rows_out"]
    props = hats.read_properties(workdir / "features" / "all14")
    assert props["photoz_split_seed"] == "3" and props["photoz_selection_require_complete"] == "true"
    assert not list(workdir.glob(".features-staging-*")) and not list((workdir / "features").glob(".*"))


@pytest.mark.parametrize("args, message", [
    (["--band-set", "nope"], "unknown band set 'nope'; known band sets: all14, optical8"),
    (["features.matched=elsewhere"], "matched catalog not found: "),
    (["features.split.train=0.9"], "must be 3 values >= 0 summing to 1"),
])
def test_bad_settings_refused_with_one_line(built, capsys, args, message):
    workdir, _, _ = built
    with pytest.raises(SystemExit) as exit_info:
        build_features.main(["--workdir", str(workdir), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit):
        build_features.main(["--help"])
    out = capsys.readouterr().out
    assert all(text in out for text in ("--band-set NAME", "--require-complete", "--workdir", "stats.json"))


def test_missing_band_column_named(tmp_path, capsys):
    write_matched(tmp_path, matched_table(50).drop_columns(["FLUX_IVAR_W4"]))
    with pytest.raises(SystemExit):
        build_features.main(["--workdir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert "no column 'FLUX_IVAR_W4' (band wise_w4 of catalog desi_ls)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "features").exists()
