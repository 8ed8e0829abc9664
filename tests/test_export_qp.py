"""photoz_spark.export.qp and jobs/export_qp.py: qp ensembles and qp files from a score output.

The score outputs here are written without Spark: a small untrained network scores a toy
catalog through the scoring kernel (``score_batch``, the function the scoring job runs per
batch), and ``hats.write_hats_table`` writes the result in the score catalog's layout.
"""

import json

import numpy as np
import pyarrow as pa
import pytest
import qp  # the astro extra; `make test` installs it (no importorskip: CI cannot skip these)
import torch

from photoz_spark import hats
from photoz_spark.bands import load_bands
from photoz_spark.export import qp as export
from photoz_spark.features.sequencing import sequence
from photoz_spark.features.stats import compute_stats
from photoz_spark.flags import Flag
from photoz_spark.jobs import export_qp as export_job
from photoz_spark.model import BiLSTMMDN, ModelConfig, mdn
from photoz_spark.model.calibration import MixtureCalibration, PitCalibration
from photoz_spark.registry.artifact import PhotozModel, save_model_files
from photoz_spark.scoring.kernel import score_batch
from photoz_spark.toy import toy_matched_table

REG = load_bands()
BAND_SET = REG.band_set("sdss_wise9")
N = 1500
ORDER = 5
KEEP = ("THING_ID", "RA", "DEC", "_healpix_29")
GRID = np.linspace(0.0, 6.0, 301)
UNSCORED = 7  # row index (THING_ID 1007) with no observed band


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> PhotozModel:
    return toy_model(tmp_path_factory.mktemp("model"))


def toy_model(directory) -> PhotozModel:
    """A small untrained network saved in ``directory`` (tests/test_faults.py exports its scores too)."""
    raw, observed, _ = sequence(toy_matched_table(300, 3), BAND_SET, REG)
    config = ModelConfig(n_steps=len(BAND_SET), hidden1=8, hidden2=4, dense=8, n_components=3)
    torch.manual_seed(2)
    layout = {"band_set": BAND_SET.name, "bands": BAND_SET.names, "n_steps": len(BAND_SET), "n_channels": 2}
    save_model_files(directory, BiLSTMMDN(config).state_dict(),
                     {"model_config": config.to_dict(), "layout": layout,
                      "stats": compute_stats(raw, observed, BAND_SET)})
    return PhotozModel(directory, REG)


def catalog_to_score(n: int = N, seed: int = 11) -> pa.Table:
    table = toy_matched_table(n, seed)
    for band in BAND_SET.bands:  # one row with nothing observed: NOT_SCORED, NaN mixture
        flux = table.column(band.flux).to_numpy().copy()
        flux[UNSCORED] = np.nan
        table = table.set_column(table.schema.get_field_index(band.flux), band.flux, pa.array(flux))
    return table


def write_scores(model: PhotozModel, path, calibration: PitCalibration | MixtureCalibration | None = None) -> pa.Table:
    """Score the toy catalog as the scoring job does and write it as scores/<name>."""
    model.calibration = calibration
    try:
        scored = pa.Table.from_batches([score_batch(model, catalog_to_score(), KEEP)])
    finally:
        model.calibration = None
    props = {"photoz_model_name": "toy", "photoz_model_version": "1", "photoz_model_uri": "models:/toy/1",
             "photoz_calibration": json.dumps(calibration.to_dict()) if calibration else "none"}
    hats.write_hats_table(scored, path, order=ORDER, ra_col="RA", dec_col="DEC", catalog_name=f"scores_{path.name}",
                          extra_properties=props)
    return scored


@pytest.fixture(scope="module")
def scores(model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("export")
    scored = write_scores(model, workdir / "scores" / "toy")
    return workdir, scored


def mixture_pdf(table: pa.Table) -> np.ndarray:
    """The score output's mixture densities on GRID, through the project's own mixture maths."""
    w, mu, sigma = (torch.tensor(export.mixture_arrays(table)[k]) for k in ("weights", "means", "stds"))
    return mdn.pdf_grid(w, mu, sigma, torch.from_numpy(GRID).float()).numpy()


def by_id(table: pa.Table, ids) -> pa.Table:
    """``table``'s rows in the order of ``ids``."""
    row = {i: r for r, i in enumerate(table["THING_ID"].to_pylist())}
    return table.take([row[i] for i in ids])


def test_to_qp_pdfs_and_ids_equal_the_score_output(scores):
    workdir, scored = scores
    ensemble = export.to_qp(workdir / "scores" / "toy")
    assert isinstance(ensemble.gen_obj, qp.mixmod_gen) and ensemble.npdf == N
    assert sorted(ensemble.ancil) == sorted([*KEEP, "n_observed", "flags"])
    ids = ensemble.ancil["THING_ID"]
    assert sorted(ids) == sorted(scored["THING_ID"].to_pylist())
    expected = by_id(scored, ids)
    ok = expected["n_observed"].to_numpy() > 0
    assert (~ok).sum() == 1
    np.testing.assert_allclose(ensemble.pdf(GRID)[ok], mixture_pdf(expected)[ok], rtol=1e-5, atol=1e-6)
    grid = torch.from_numpy(GRID).float()
    w, mu, sigma = (torch.tensor(export.mixture_arrays(expected)[k]) for k in ("weights", "means", "stds"))
    np.testing.assert_allclose(ensemble.cdf(GRID)[ok], mdn.cdf_grid(w, mu, sigma, grid).numpy()[ok], atol=1e-5)
    # The uncalibrated model's summaries are the ensemble's: qp's CDF at z_phot_median is 1/2.
    median = expected["z_phot_median"].to_numpy().astype(float)[:, None]
    np.testing.assert_allclose(ensemble.cdf(median)[ok].ravel(), 0.5, atol=1e-4)
    for c in ("RA", "DEC", "n_observed", "flags"):
        np.testing.assert_array_equal(ensemble.ancil[c], expected[c].to_numpy())
    # The unscored row is kept: NaN PDF, NOT_SCORED in its flags.
    assert np.isnan(ensemble.pdf(GRID)[~ok]).all()
    assert ensemble.ancil["flags"][~ok][0] & Flag.NOT_SCORED


def test_to_qp_selection_pixels_limit_and_columns(scores):
    workdir, scored = scores
    catalog = export.ScoreCatalog.open(workdir / "scores" / "toy")
    assert len(catalog.pixels) >= 3 and not catalog.calibrated
    pick = catalog.pixels[1:3]
    in_pick = np.isin(hats.pixel_at_order(scored["_healpix_29"].to_numpy(), ORDER), pick)
    ensemble = export.to_qp(catalog.path, pixels=pick, columns=["THING_ID", "z_phot_mean"])
    assert ensemble.npdf == in_pick.sum() and sorted(ensemble.ancil) == ["THING_ID", "z_phot_mean"]
    assert sorted(ensemble.ancil["THING_ID"]) == sorted(scored["THING_ID"].to_numpy()[in_pick])
    first = export.to_qp(catalog.path, limit=10)
    assert first.npdf == 10
    scored_only = export.to_qp(catalog.path, scored_only=True)
    assert scored_only.npdf == N - 1 and 1000 + UNSCORED not in scored_only.ancil["THING_ID"]
    assert np.isfinite(scored_only.median()).all(), "qp's ppf works once the NaN row is gone"
    assert export.to_qp(catalog.path, limit=0).npdf == 0


def test_export_per_pixel_files_open_with_qp_read(scores):
    workdir, scored = scores
    out = workdir / "qp" / "toy"
    summary = export.export_qp(workdir / "scores" / "toy", out)
    catalog = export.ScoreCatalog.open(workdir / "scores" / "toy")
    assert summary["rows"] == N and len(summary["files"]) == len(catalog.pixels)
    assert json.loads((out / "export.json").read_text())["files"] == summary["files"]
    seen = []
    for relpath, rows in summary["files"].items():
        path = out / relpath
        assert path.suffix == ".hdf5" and qp.is_qp_file(str(path))
        ensemble = qp.read(str(path))
        npix = int(path.stem.split("=")[1])
        assert ensemble.npdf == rows
        assert (hats.pixel_at_order(ensemble.ancil["_healpix_29"], ORDER) == npix).all()
        ids = ensemble.ancil["THING_ID"]
        expected = by_id(scored, ids)
        ok = expected["n_observed"].to_numpy() > 0
        np.testing.assert_allclose(ensemble.pdf(GRID)[ok], mixture_pdf(expected)[ok], rtol=1e-5, atol=1e-6)
        seen.extend(ids)
    assert sorted(seen) == sorted(scored["THING_ID"].to_pylist()), "every row exported once"


def test_single_file_parquet_and_limit(scores):
    workdir, scored = scores
    summary = export.export_qp(workdir / "scores" / "toy", workdir / "qp" / "first100", limit=100,
                               single_file=True, fmt="parquet")
    assert summary["files"] == {"first100.pq": 100}
    path = str(workdir / "qp" / "first100" / "first100.pq")
    assert qp.is_qp_file(path)
    ensemble = qp.read(path)
    expected = by_id(scored, ensemble.ancil["THING_ID"])
    ok = expected["n_observed"].to_numpy() > 0
    np.testing.assert_allclose(ensemble.pdf(GRID)[ok], mixture_pdf(expected)[ok], rtol=1e-5, atol=1e-6)


def test_rerun_replaces_and_failure_keeps_previous(scores, monkeypatch):
    workdir, _ = scores
    source, out = workdir / "scores" / "toy", workdir / "qp" / "rerun"
    every = export.export_qp(source, out)
    one = export.ScoreCatalog.open(source).pixels[:1]
    export.export_qp(source, out, pixels=one)
    assert sorted(p.name for p in out.rglob("*.hdf5")) == [f"Npix={one[0]}.hdf5"], "rerun replaced, not added"

    original, calls = export.ensemble_from_table, []

    def killed_at_second_pixel(table, columns):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(table, columns)

    monkeypatch.setattr(export, "ensemble_from_table", killed_at_second_pixel)
    with pytest.raises(RuntimeError, match="killed"):
        export.export_qp(source, out)
    assert sorted(p.name for p in out.rglob("*.hdf5")) == [f"Npix={one[0]}.hdf5"], "the earlier export is intact"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == [], "no staging left behind"
    assert every["rows"] == N


def test_calibrated_scores_export_the_networks_mixture(model, tmp_path):
    u = np.linspace(0, 1, 1001)  # a too-narrow model's PIT: the map widens every PDF
    calibration = PitCalibration.fit(0.5 + 0.5 * np.sign(2 * u - 1) * np.abs(2 * u - 1) ** 0.5)
    scored = write_scores(model, tmp_path / "scores" / "cal", calibration)
    summary = export.export_qp(tmp_path / "scores" / "cal", tmp_path / "qp" / "cal", single_file=True,
                               scored_only=True)
    assert summary["calibrated"] and summary["calibration_method"] == "pit_map"
    assert "network's mixture" in summary["ensemble"]
    assert summary["rows"] == N - 1 and summary["unscored_dropped"] == 1
    ensemble = qp.read(str(tmp_path / "qp" / "cal" / "cal.hdf5"))
    expected = by_id(scored, ensemble.ancil["THING_ID"])
    ok = expected["n_observed"].to_numpy() > 0
    np.testing.assert_allclose(ensemble.pdf(GRID)[ok], mixture_pdf(expected)[ok], rtol=1e-5, atol=1e-6)
    # ... and not the recalibrated PDF that z_phot_* describe: the network's mixture holds more
    # than 68 % between the recalibrated (wider) z_phot_l68 and z_phot_u68.
    bounds = {c: expected[c].to_numpy().astype(float)[:, None] for c in ("z_phot_l68", "z_phot_u68")}
    inside = (ensemble.cdf(bounds["z_phot_u68"]) - ensemble.cdf(bounds["z_phot_l68"])).ravel()
    assert (inside > 0.70).mean() > 0.95


def test_mixture_calibrated_scores_export_the_pdf_the_summaries_describe(model, tmp_path):
    # Widen every PDF 1.8x and shift it by +0.1: the mixture columns then ARE the recalibrated PDF.
    calibration = MixtureCalibration((0.0, 5.0), (1.8, 1.8), (0.1, 0.1))
    raw = write_scores(model, tmp_path / "scores" / "raw")
    scored = write_scores(model, tmp_path / "scores" / "mix", calibration)
    summary = export.export_qp(tmp_path / "scores" / "mix", tmp_path / "qp" / "mix", single_file=True,
                               scored_only=True)
    assert summary["calibrated"] and summary["calibration_method"] == "mixture"
    assert "recalibrated mixture" in summary["ensemble"]
    ensemble = qp.read(str(tmp_path / "qp" / "mix" / "mix.hdf5"))
    expected = by_id(scored, ensemble.ancil["THING_ID"])
    before = by_id(raw, ensemble.ancil["THING_ID"])
    ok = expected["n_observed"].to_numpy() > 0
    np.testing.assert_allclose(ensemble.pdf(GRID)[ok], mixture_pdf(expected)[ok], rtol=1e-5, atol=1e-6)
    # The exported PDF is what z_phot_* summarise: 68 % between z_phot_l68 and z_phot_u68, its mean
    # is z_phot_mean, and it is the raw PDF widened 1.8x and moved by 0.1.
    bounds = {c: expected[c].to_numpy().astype(float)[:, None] for c in ("z_phot_l68", "z_phot_u68")}
    inside = (ensemble.cdf(bounds["z_phot_u68"]) - ensemble.cdf(bounds["z_phot_l68"])).ravel()[ok]
    np.testing.assert_allclose(inside, 0.68, atol=2e-3)
    w, mu = (np.stack(expected[c].to_numpy(zero_copy_only=False)[ok]) for c in ("mixmod_weights", "mixmod_means"))
    np.testing.assert_allclose((w * mu).sum(1), expected["z_phot_mean"].to_numpy()[ok], atol=1e-5)
    np.testing.assert_allclose(expected["z_phot_mean"].to_numpy()[ok], before["z_phot_mean"].to_numpy()[ok] + 0.1,
                               atol=1e-4)
    np.testing.assert_allclose(expected["z_phot_std"].to_numpy()[ok], 1.8 * before["z_phot_std"].to_numpy()[ok],
                               rtol=1e-4)


def test_string_ids_are_written_not_dropped(tmp_path):
    """A catalog with text ids: qp's HDF5 writer would silently leave out an object array."""
    mixture = {"weights": [0.5, 0.5], "means": [1.0, 2.0], "stds": [0.1, 0.2]}
    table = pa.table({"name": ["J1", None, "J333"], "flag": pa.array([True, False, True]),
                      **{c: pa.array([mixture[k]] * 3, pa.list_(pa.float32())) for k, c in export.MIXTURE_COLUMNS.items()}})
    ensemble = export.ensemble_from_table(table, ["name", "flag"])
    ensemble.write_to(str(tmp_path / "names.hdf5"))
    back = qp.read(str(tmp_path / "names.hdf5"))
    assert back.ancil["name"].tolist() == ["J1", "", "J333"] and back.ancil["flag"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="cannot be qp ancillary"):
        export.ensemble_from_table(table, ["mixmod_means"])


def test_bad_requests_refused_with_clear_errors(scores, tmp_path):
    workdir, _ = scores
    source = workdir / "scores" / "toy"
    with pytest.raises(ValueError, match="not a score output"):
        catalog = toy_matched_table(20, 1)
        hats.write_hats_table(catalog, tmp_path / "plain", order=ORDER, ra_col="RA", dec_col="DEC", catalog_name="x")
        export.to_qp(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="not a HATS catalog"):
        export.to_qp(tmp_path / "nothing")
    with pytest.raises(ValueError, match="no pixel"):
        export.to_qp(source, pixels=[0])
    with pytest.raises(ValueError, match="no column"):
        export.to_qp(source, columns=["objID"])
    with pytest.raises(ValueError, match="format must be"):
        export.export_qp(source, tmp_path / "qp", fmt="fits")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        export.export_qp(source, tmp_path / "keep")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_job_writes_files_and_prints_summary(scores, capsys):
    workdir, _ = scores
    pixels = export.ScoreCatalog.open(workdir / "scores" / "toy").pixels[:2]
    summary = export_job.main(["--workdir", str(workdir), "--input", "scores/toy", "--output", "two",
                               "--pixels", ",".join(map(str, pixels)), "--columns", "THING_ID,z_phot_mean"])
    out = capsys.readouterr().out
    assert "=== export_qp ===" in out and "the network's mixture" in out and "qp.read(" in out
    assert summary["pixels"] == pixels and len(summary["files"]) == 2
    first = qp.read(str(workdir / "qp" / "two" / next(iter(summary["files"]))))
    assert sorted(first.ancil) == ["THING_ID", "z_phot_mean"]


@pytest.mark.parametrize("argv, message", [
    (["--input", "matched/dr16q"], "export.input must be scores/<name>"),
    (["--input", "scores/missing"], "not a HATS catalog"),
    (["--limit", "-1"], "export.limit must be >= 0"),
    (["--format", "fits"], "format must be one of"),
    (["--columns", "nope"], "no column"),
])
def test_job_refuses_bad_settings_with_one_line(scores, capsys, argv, message):
    workdir, _ = scores
    with pytest.raises(SystemExit) as exit_info:
        export_job.main(["--workdir", str(workdir), "--input", "scores/toy", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
