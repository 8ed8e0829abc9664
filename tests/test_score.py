"""jobs/score_catalog.py: output contract, bad photometry, missing columns, kill and rerun."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from photoz_spark import PROJECT_DIR, hats
from photoz_spark.bands import load_bands
from photoz_spark.flags import Flag, count_flags
from photoz_spark.jobs import build_features, score_catalog
from photoz_spark.jobs import train as train_job
from photoz_spark.toy import toy_matched_table

REG = load_bands()
BAND_SET = REG.band_set("sdss_wise9")
SMALL_MODEL = ["model.hidden1=16", "model.hidden2=8", "model.dense=16", "model.n_components=3",
               "train.batch_size=64", "train.max_epochs=2", "train.band_set=sdss_wise9", "train.lr=0.01"]
K = 3
N = 2000
BAD = {"nan_flux": 0, "inf_flux": 1, "zero_ivar": 2, "negative_ivar": 3, "all_missing": 4}


def write(table: pa.Table, path) -> None:
    hats.write_hats_table(table, path, order=5, ra_col="RA", dec_col="DEC", catalog_name=path.name)


def read(catalog, columns=None) -> pa.Table:
    return pq.read_table(catalog / hats.DATASET_DIR, columns=columns, partitioning=None)


def scoring_input(n: int, seed: int) -> pa.Table:
    """A toy catalog with broken photometry in the first rows (see BAD)."""
    table = toy_matched_table(n, seed)
    cols = {name: table.column(name).to_numpy().copy() for name in table.column_names}
    u, g = BAND_SET.bands[0], BAND_SET.bands[1]
    cols[u.flux][BAD["nan_flux"]] = np.nan
    cols[u.flux][BAD["inf_flux"]] = np.inf
    cols[g.err][BAD["zero_ivar"]] = 0.0  # ivar 0: no measurement
    cols[g.err][BAD["negative_ivar"]] = -1.0
    for band in BAND_SET.bands:
        cols[band.flux][BAD["all_missing"]] = np.nan
    return pa.table(cols)


@pytest.fixture(scope="module")
def workdir(spark, tmp_path_factory):
    wd = tmp_path_factory.mktemp("score")
    write(toy_matched_table(3000, 0), wd / "matched" / "dr16q")
    build_features.main(["--workdir", str(wd), "--band-set", "sdss_wise9"])
    trained = train_job.main(["--workdir", str(wd), *SMALL_MODEL])
    import mlflow
    mlflow.set_tracking_uri(trained["tracking_uri"])
    write(scoring_input(N, 5), wd / "matched" / "toscore")
    return wd


@pytest.fixture(scope="module")
def scored(workdir):
    first = score_catalog.main(["--workdir", str(workdir), "--input", "matched/toscore"])
    again = score_catalog.main(["--workdir", str(workdir), "--input", "matched/toscore"])  # rerun replaces
    assert first["rows_out"] == again["rows_out"] == N
    return again, read(workdir / "scores" / "toscore")


@pytest.fixture(scope="module")
def model(workdir):
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model

    return PhotozModel(download_model("models:/photoz-lstm-mdn@champion"))


def test_output_contract(scored, workdir, model):
    _, out = scored
    estimates = ["z_phot_mean", "z_phot_median", "z_phot_mode", "z_phot_std",
                 "z_phot_l68", "z_phot_u68", "z_phot_l95", "z_phot_u95", "z_conf"]
    assert out.column_names == ["THING_ID", "RA", "DEC", "_healpix_29", *estimates, "mixmod_weights",
                                "mixmod_means", "mixmod_stds", "n_observed", "flags"]
    assert all(out.schema.field(c).type == pa.float32() for c in estimates)
    for c in ("mixmod_weights", "mixmod_means", "mixmod_stds"):
        assert out.schema.field(c).type == pa.list_(pa.float32(), K)  # fixed-size: K in the schema
        assert set(pc.list_value_length(out[c]).to_numpy()) == {K}
    assert out.schema.field("n_observed").type == out.schema.field("flags").type == pa.int32()
    assert out.num_rows == N and len(set(out["THING_ID"].to_pylist())) == N

    source = read(workdir / "matched" / "toscore")
    assert out["THING_ID"].to_pylist() == source["THING_ID"].to_pylist(), "same order as the input"
    ok = ~np.isnan(out["z_phot_mean"].to_numpy())
    q = {c: out[c].to_numpy()[ok] for c in estimates}
    assert (q["z_phot_l95"] <= q["z_phot_l68"]).all() and (q["z_phot_l68"] <= q["z_phot_median"]).all()
    assert (q["z_phot_median"] <= q["z_phot_u68"]).all() and (q["z_phot_u68"] <= q["z_phot_u95"]).all()
    assert (q["z_phot_std"] > 0).all()
    assert (q["z_conf"] >= 0).all() and (q["z_conf"] <= 1).all() and q["z_conf"].std() > 0
    weights = np.stack(out["mixmod_weights"].to_numpy(zero_copy_only=False)[ok])
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)

    expected = model.predict_table(source)
    np.testing.assert_allclose(out["z_phot_mean"].to_numpy()[ok], expected.z_phot_mean.to_numpy()[ok], rtol=1e-5)
    np.testing.assert_allclose(q["z_phot_median"], expected.z_phot_median.to_numpy()[ok], atol=1e-4)
    np.testing.assert_allclose(q["z_conf"], expected.z_conf.to_numpy()[ok], atol=1e-5)
    np.testing.assert_array_equal(out["n_observed"].to_numpy(), expected.n_observed.to_numpy())

    props = hats.read_properties(workdir / "scores" / "toscore")
    assert props["photoz_model_name"] == "photoz-lstm-mdn" and props["photoz_model_version"] == "1"
    assert props["photoz_model_uri"] == "models:/photoz-lstm-mdn/1" and int(props["hats_nrows"]) == N


def test_bad_photometry_is_flagged_not_fatal(scored):
    summary, out = scored
    by_id = {i: r for r, i in enumerate(out["THING_ID"].to_pylist())}
    flags, mean = out["flags"].to_numpy(), out["z_phot_mean"].to_numpy()
    row = {k: by_id[1000 + v] for k, v in BAD.items()}  # toy ids start at 1000
    assert flags[row["nan_flux"]] & Flag.BAD_FLUX and flags[row["inf_flux"]] & Flag.BAD_FLUX
    assert flags[row["negative_ivar"]] & Flag.BAD_ERROR
    assert flags[row["zero_ivar"]] & Flag.MISSING_BAND and not flags[row["zero_ivar"]] & Flag.BAD_ERROR
    for k in ("nan_flux", "inf_flux", "zero_ivar", "negative_ivar"):
        assert np.isfinite(mean[row[k]]) and not flags[row[k]] & Flag.NOT_SCORED
    r = row["all_missing"]
    assert flags[r] & Flag.NOT_SCORED and flags[r] & Flag.BAD_FLUX and out["n_observed"].to_numpy()[r] == 0
    assert all(np.isnan(out[c].to_numpy()[r]) for c in ("z_phot_mean", "z_phot_median", "z_phot_mode", "z_phot_u95"))
    assert np.isnan(out["mixmod_means"][r].as_py()).all()
    assert summary["not_scored"] == 1 and np.isfinite(np.delete(mean, r)).all()
    # The summary's counts come from the tasks (the driver never reads the output back): same numbers.
    assert summary["flagged"] == count_flags(flags) and summary["flagged"]["BAD_FLUX"] >= 2


def test_kernel_without_spark(model):
    from photoz_spark.model import mdn
    from photoz_spark.scoring import score_batch

    table = scoring_input(300, 9)
    out = score_batch(model, table, keep=["THING_ID"])
    assert out.num_rows == 300 and out.column(0).equals(table["THING_ID"].combine_chunks())
    ok = out.column("n_observed").to_numpy() > 0
    raw, observed = __import__("photoz_spark.features.sequencing", fromlist=["sequence"]).sequence(
        table, model.band_set, model.bands)[:2]
    w, mu, sigma = model.mixture_of(raw[ok], observed[ok])
    grid_mode = mdn.mode(w, mu, sigma).numpy()
    np.testing.assert_allclose(out.column("z_phot_mode").to_numpy()[ok], grid_mode, atol=2e-3)
    qs = mdn.quantiles(w, mu, sigma, [0.16, 0.84])
    np.testing.assert_allclose(qs[:, 1].numpy(), mdn.quantile(w, mu, sigma, 0.84).numpy(), atol=1e-5)


def test_missing_columns_one_line_error(workdir, capsys):
    table = toy_matched_table(50, 3).drop(["psfFlux_u", "FLUX_IVAR_W2", "THING_ID"])
    write(table, workdir / "catalogs" / "dr16q")
    with pytest.raises(SystemExit) as exit_info:
        score_catalog.main(["--workdir", str(workdir), "--input", "catalogs/dr16q"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "band set 'sdss_wise9'" in err and "catalogs/dr16q" in err
    assert "psfFlux_u" in err and "FLUX_IVAR_W2" in err and "THING_ID" in err
    assert not (workdir / "scores" / "dr16q").exists()


def test_killed_run_leaves_no_partial_output_and_rerun_completes(workdir):
    write(toy_matched_table(60_000, 11), workdir / "matched" / "big")
    target = workdir / "scores" / "big"
    args = [sys.executable, str(PROJECT_DIR / "jobs" / "score_catalog.py"), "--workdir", str(workdir),
            "--input", "matched/big", "score.batch_size=64", "spark.master=local[2]"]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(workdir.glob(".score-staging-*/.big.staging-*/dataset/Norder=5")):
            time.sleep(1.0)  # the executors are scoring and writing
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists(), "a killed run must leave no catalog where a finished one would be"

    summary = score_catalog.main(["--workdir", str(workdir), "--input", "matched/big"])
    out = read(target, ["THING_ID"])
    assert summary["rows_out"] == out.num_rows == 60_000 and len(set(out["THING_ID"].to_pylist())) == 60_000
    assert [p.name for p in (workdir / "scores").iterdir() if "big" in p.name] == ["big"]


def test_absent_band_scored_as_unobserved_only_when_asked(workdir, capsys):
    u = BAND_SET.bands[0]
    write(toy_matched_table(400, 21).drop([u.flux, u.err]), workdir / "matched" / "no_u")
    with pytest.raises(SystemExit):
        score_catalog.main(["--workdir", str(workdir), "--input", "matched/no_u"])
    assert "score.missing_bands" in capsys.readouterr().err

    summary = score_catalog.main(["--workdir", str(workdir), "--input", "matched/no_u",
                                  f"score.missing_bands=[{u.name}]"])
    out = read(workdir / "scores" / "no_u")
    assert summary["rows_out"] == out.num_rows == 400 and summary["absent_bands"] == u.name
    assert out["n_observed"].to_numpy().max() == len(BAND_SET) - 1
    assert (out["flags"].to_numpy() & Flag.MISSING_BAND).all()
    assert hats.read_properties(workdir / "scores" / "no_u")["photoz_absent_bands"] == u.name


class _Accumulator:
    def __init__(self):
        self.value = []

    def add(self, item):
        self.value += item


def test_half_precision_is_used_only_when_it_agrees_with_fp32(workdir, model):
    """The agreement check and the fp32 fallback (bf16 autocast on the CPU stands in for a GPU)."""
    from photoz_spark.registry.resolve import ModelFiles
    from photoz_spark.scoring.run import Runtime, _checked_precision

    files = ModelFiles("m", "1", "", b"weights", b"meta")
    batch = scoring_input(500, 3).to_batches()[0]
    strict, loose = _Accumulator(), _Accumulator()
    chosen = _checked_precision(model, files, "cuda:7", Runtime("cuda", "bf16", 1e-12, 0.99, 256), batch, strict)
    assert chosen == "fp32" and strict.value[0]["passed"] is False and strict.value[0]["rows"] == 256
    assert strict.value[0]["dz_quantile"] > 1e-12
    chosen = _checked_precision(model, files, "cuda:8", Runtime("cuda", "bf16", 10.0, 1.0, 256), batch, loose)
    assert chosen == "bf16" and loose.value[0]["passed"] is True
    assert Runtime("auto", "auto").wanted_precision("cpu") == "fp32"
    assert Runtime("auto", "auto").wanted_precision("cuda:0") == "fp16"
    model.precision = "fp32"


def test_recalibrated_model_changes_the_summaries_not_the_mixture(model):
    from photoz_spark.model.calibration import PitCalibration
    from photoz_spark.scoring import score_batch

    table = scoring_input(300, 4)
    raw = score_batch(model, table)
    levels = np.linspace(0, 1, 11)
    try:
        model.calibration = PitCalibration(tuple(levels), tuple(levels))  # identity map
        same = score_batch(model, table)
        # Too-narrow PDFs: PIT values crowd towards 0 and 1, so G stretches the tails -> wider PDFs.
        u = np.linspace(0, 1, 1001)
        model.calibration = PitCalibration.fit(0.5 + 0.5 * np.sign(2 * u - 1) * np.abs(2 * u - 1) ** 0.5)
        wider = score_batch(model, table)
    finally:
        model.calibration = None
    ok = raw.column("n_observed").to_numpy() > 0
    for c in ("z_phot_mean", "z_phot_median", "z_phot_l68", "z_phot_u95"):
        np.testing.assert_allclose(same.column(c).to_numpy()[ok], raw.column(c).to_numpy()[ok], atol=1e-4)
    for t in (same, wider):  # the mixture stays the network's (NaN rows included)
        np.testing.assert_array_equal(t.column("mixmod_means").flatten().to_numpy(),
                                      raw.column("mixmod_means").flatten().to_numpy())
    width = {name: (t.column("z_phot_u68").to_numpy() - t.column("z_phot_l68").to_numpy())[ok]
             for name, t in (("raw", raw), ("wider", wider))}
    assert (width["wider"] > width["raw"]).mean() > 0.95
    assert np.median(wider.column("z_phot_std").to_numpy()[ok] / raw.column("z_phot_std").to_numpy()[ok]) > 1.2


def test_mixture_recalibrated_model_writes_the_calibrated_mixture(model):
    from photoz_spark.model import mdn
    from photoz_spark.model.calibration import MixtureCalibration
    from photoz_spark.scoring import score_batch

    table = scoring_input(300, 4)
    raw = score_batch(model, table)
    try:
        model.calibration = MixtureCalibration((0.0, 5.0), (2.0, 2.0), (0.05, 0.05), temperature=1.0)
        wider = score_batch(model, table)
    finally:
        model.calibration = None
    ok = raw.column("n_observed").to_numpy() > 0

    def arrays(t, c):
        return np.stack(t.column(c).to_numpy(zero_copy_only=False)[ok]).astype(float)

    w, mu, sd = (arrays(raw, c) for c in ("mixmod_weights", "mixmod_means", "mixmod_stds"))
    mean = (w * mu).sum(1, keepdims=True)
    # The mixture columns are the recalibrated PDF: twice as wide about its mean, moved by 0.05 ...
    np.testing.assert_allclose(arrays(wider, "mixmod_weights"), w, atol=1e-6)
    np.testing.assert_allclose(arrays(wider, "mixmod_stds"), 2 * sd, rtol=1e-5)
    np.testing.assert_allclose(arrays(wider, "mixmod_means"), mean + 0.05 + 2 * (mu - mean), atol=2e-5)
    # ... and every summary describes that mixture (z_phot_std exactly twice the raw one).
    col = {c: wider.column(c).to_numpy()[ok] for c in ("z_phot_mean", "z_phot_std", "z_conf")}
    np.testing.assert_allclose(col["z_phot_mean"], raw.column("z_phot_mean").to_numpy()[ok] + 0.05, atol=2e-5)
    np.testing.assert_allclose(col["z_phot_std"], 2 * raw.column("z_phot_std").to_numpy()[ok], rtol=1e-4)
    torch_args = (torch.tensor(arrays(wider, c)) for c in ("mixmod_weights", "mixmod_means", "mixmod_stds"))
    np.testing.assert_allclose(col["z_conf"], mdn.z_conf(*torch_args, torch.tensor(col["z_phot_mean"], dtype=torch.float64)),
                               atol=1e-5)
    assert (col["z_conf"] < raw.column("z_conf").to_numpy()[ok] + 1e-6).all()   # wider PDFs: less mass near z_phot


# --- hardening (issue 18): bad catalogs and model files are one line, an empty catalog an empty output ---

def test_empty_catalog_gives_an_empty_output_with_a_summary(workdir, capsys):
    write(scoring_input(10, 6).slice(0, 0), workdir / "matched" / "empty")
    summary = score_catalog.main(["--workdir", str(workdir), "--input", "matched/empty"])
    out = read(workdir / "scores" / "empty")
    assert summary["rows_in"] == summary["rows_out"] == out.num_rows == 0 and summary["not_scored"] == 0
    assert hats.read_schema(workdir / "scores" / "empty").names[-2:] == ["n_observed", "flags"]
    assert int(hats.read_properties(workdir / "scores" / "empty")["hats_nrows"]) == 0
    assert "matched/empty  0 rows" in capsys.readouterr().out


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        score_catalog.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_string_flux_and_truncated_file_are_one_line_naming_them(workdir, capsys):
    table = scoring_input(200, 7)
    flux = BAND_SET.bands[2].flux
    as_text = table.set_column(table.schema.get_field_index(flux), flux, pc.cast(table[flux], pa.string()))
    write(as_text, workdir / "matched" / "text_flux")
    err = _one_line_error(capsys, ["--workdir", str(workdir), "--input", "matched/text_flux"])
    assert f"{flux} (string)" in err and "matched/text_flux" in err and "must be numbers" in err

    write(table, workdir / "matched" / "cut")
    victim = max((workdir / "matched" / "cut" / hats.DATASET_DIR).rglob("Npix=*.parquet"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    err = _one_line_error(capsys, ["--workdir", str(workdir), "--input", "matched/cut"])
    assert str(victim) in err and "unreadable" in err

    write(table, workdir / "matched" / "short")
    victim = next((workdir / "matched" / "short" / hats.DATASET_DIR).rglob("Npix=*.parquet"))
    pq.write_table(pq.read_table(victim).slice(0, 1), victim)  # a readable file with fewer rows
    err = _one_line_error(capsys, ["--workdir", str(workdir), "--input", "matched/short"])
    assert "hats_nrows=200" in err
    for name in ("text_flux", "cut", "short"):
        assert not (workdir / "scores" / name).exists()


def test_a_bands_file_in_other_units_than_the_model_is_refused(workdir, tmp_path, capsys):
    """The model was trained with W1 in nanomaggies; a bands file that says nJy describes other
    numbers: refused before any row is read (issue 18: it scored with exit 0, z shifted by 0.07)."""
    text = (PROJECT_DIR / "conf" / "bands.yaml").read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith("wise_w1:"))
    bands_file = tmp_path / "bands.yaml"
    bands_file.write_text(text.replace(line, line.replace("unit: nanomaggy", "unit: nJy")))
    err = _one_line_error(capsys, ["--workdir", str(workdir), "--input", "matched/toscore", "score.output=nJy",
                                   f"bands_file={bands_file}"])
    assert "wise_w1 unit nJy (1e-09 Jy) here, nanomaggy (3.631e-06 Jy) in the model" in err
    assert str(bands_file) in err and not (workdir / "scores" / "nJy").exists()


class Payload:
    """Anything that is not a tensor: torch refuses to unpickle it with weights_only=True."""


def test_pickled_weights_are_refused_in_one_line(workdir, tmp_path):
    import shutil

    import torch

    from photoz_spark.errors import InputError
    from photoz_spark.registry.artifact import WEIGHTS_FILE, PhotozModel
    from photoz_spark.registry.tracking import download_model

    directory = shutil.copytree(download_model("models:/photoz-lstm-mdn@champion"), tmp_path / "m")
    torch.save({"payload": Payload()}, directory / WEIGHTS_FILE)
    with pytest.raises(InputError) as info:
        PhotozModel(directory)
    message = str(info.value)
    assert "pickled Python objects" in message and str(directory / WEIGHTS_FILE) in message
    assert len(message.splitlines()) == 1 and "weights_only=False" not in message
    (directory / WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable torch weights file"):
        PhotozModel(directory)


def test_model_downloads_are_removed_at_exit_and_orphans_by_the_next_download(workdir, tmp_path):
    import mlflow

    orphan = tmp_path / "photoz-model-999999999-leftover"  # a killed process's copy (no such pid)
    orphan.mkdir()
    code = ("from photoz_spark.registry.tracking import download_model; "
            "d = download_model('models:/photoz-lstm-mdn@champion'); assert (d / 'model.json').is_file(); print(d)")
    env = {**os.environ, "TMPDIR": str(tmp_path), "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path / "photoz-model-"))
    assert not list(tmp_path.glob("photoz-model-*")), "the copy is removed at exit, the orphan before"
