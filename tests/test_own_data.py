"""README "Your own data" walk-through, run exactly as written (#19 item 0).

The commands are read from the README's code block (so the two cannot drift) and run, job by
job, in-process on a generated Rubin DP1-like Object table, a spec-z CSV with its own column
names and a second DP1 field; only the work directory and, for training, a small network and one
epoch are added.
"""

from __future__ import annotations

import importlib
import re
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from photoz_spark import PROJECT_DIR, hats
from photoz_spark.flags import Flag

MARKER = "<!-- own-data walk-through: tests/test_own_data.py runs the next code block -->"
# Test-sized settings added to the README's commands (everything else is as written).
EXTRA = {"train": ["train.max_epochs=1", "train.num_processes=1", "train.batch_size=64", "model.hidden1=16",
                   "model.hidden2=8", "model.dense=16", "model.n_components=3"]}
N_TRAIN, N_SPECZ, N_FIELD2 = 3000, 2000, 1000
NJY_AB_ZERO = 31.4  # m_AB = 31.4 - 2.5 log10(f / nJy)

pytestmark = pytest.mark.slow  # seven jobs, training included: ~6 min on the loaded 2-core machine


def readme_commands() -> list[list[str]]:
    """The walk-through's commands: the code block after MARKER, continuation lines joined."""
    text = (PROJECT_DIR / "README.md").read_text()
    assert MARKER in text, "README.md lost the own-data walk-through marker"
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.DOTALL).group(1)
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dp1_table(n: int, rng, ra0: float, dec0: float, z: np.ndarray, first_id: int) -> pa.Table:
    """A DP1 Object-like table: PSF fluxes in nJy that follow a smooth function of z, NaN u and y
    (flux and error) for ~10 % of objects (not measured), 5-sigma depth ~24.5."""
    ra = ra0 + rng.uniform(-0.5, 0.5, n) / np.cos(np.radians(dec0))
    dec = dec0 + rng.uniform(-0.5, 0.5, n)
    mag_i = rng.uniform(18.0, 22.0, n)
    cols = {"objectId": np.arange(n, dtype=np.int64) + first_id, "coord_ra": ra, "coord_dec": dec,
            "refExtendedness": np.zeros(n)}
    for k, band in enumerate("ugrizy"):
        colour = 0.6 * np.sin(1.3 * z + 0.8 * k) + 0.15 * (2.5 - k)  # band - i, changing with z
        flux = 10 ** (-0.4 * (mag_i + colour - NJY_AB_ZERO))
        sigma = np.full(n, 10 ** (-0.4 * (24.5 - NJY_AB_ZERO)) / 5)
        flux = flux + rng.normal(0.0, sigma)
        if band in "uy":
            missing = rng.random(n) < 0.1
            flux[missing], sigma[missing] = np.nan, np.nan
        cols[f"{band}_psfFlux"], cols[f"{band}_psfFluxErr"] = flux, sigma
    return pa.table(cols)


@pytest.fixture(scope="module")
def walkthrough(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("own_data")
    rng = np.random.default_rng(19)
    z = rng.uniform(0.3, 3.5, N_TRAIN)
    dp1 = dp1_table(N_TRAIN, rng, 53.1, -28.1, z, 609_000_000_000_000_000)
    pq.write_table(dp1, folder / "dp1_objects.parquet")
    pick = rng.choice(N_TRAIN, N_SPECZ, replace=False)  # spectra of 2/3 of them, 0.1" off the photometry
    zflag = np.where(rng.random(N_SPECZ) < 0.03, 4, 0)
    specz = pa.table({"specid": np.arange(N_SPECZ, dtype=np.int64) + 7_000_000,
                      "ra": dp1["coord_ra"].to_numpy()[pick] + 0.1 / 3600, "dec": dp1["coord_dec"].to_numpy()[pick],
                      "redshift": z[pick], "zflag": zflag})
    pacsv.write_csv(specz, folder / "my_specz.csv")
    field2 = dp1_table(N_FIELD2, rng, 59.2, -48.8, rng.uniform(0.3, 3.5, N_FIELD2), 611_000_000_000_000_000)
    pq.write_table(field2, folder / "dp1_field2.parquet")
    summaries = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the README's relative input paths
        for argv in readme_commands():
            assert argv[0] == "python" and re.fullmatch(r"jobs/\w+\.py", argv[1]), argv
            assert (PROJECT_DIR / argv[1]).is_file()
            job = argv[1][len("jobs/"):-len(".py")]
            main = importlib.import_module(f"photoz_spark.jobs.{job}").main
            summaries.append((job, main([*argv[2:], "--workdir", str(folder / "workdir"), *EXTRA.get(job, [])])))
    return folder, dp1, specz, field2, summaries


def test_the_readme_block_is_the_whole_workflow():
    jobs = [argv[1] for argv in readme_commands()]
    assert jobs == ["jobs/ingest_catalog.py", "jobs/ingest_catalog.py", "jobs/crossmatch.py", "jobs/build_features.py",
                    "jobs/train.py", "jobs/ingest_catalog.py", "jobs/score_catalog.py"]


def test_ingest_and_crossmatch_keep_every_row(walkthrough):
    folder, dp1, _, _, summaries = walkthrough
    ingests = [s for job, s in summaries if job == "ingest_catalog"]
    assert [s["rows_written"] for s in ingests] == [N_TRAIN, N_SPECZ, N_FIELD2]
    assert [s["name"] for s in ingests] == ["dp1", "my_specz", "dp1_field2"]
    work = folder / "workdir"
    assert hats.read_properties(work / "catalogs" / "my_specz")["photoz_catalog"] == "specz"
    raw = pq.read_table(work / "catalogs" / "dp1" / "dataset", partitioning=None)
    assert raw["u_psfFlux"].null_count == int(np.isnan(dp1["u_psfFlux"].to_numpy()).sum()) > 200  # NaN -> null
    xm = dict(summaries)["crossmatch"]
    assert xm["rows_in"] == xm["rows_out"] == N_SPECZ
    assert xm["per_catalog"]["dp1"]["matched"] == N_SPECZ and xm["flags"]["NO_MATCH"] == 0
    matched = pq.read_table(work / "matched" / "my_specz" / "dataset", partitioning=None).sort_by("id")
    assert matched["id"].to_pylist()[:2] == [7_000_000, 7_000_001]
    assert {"dp1_id", "u_psfFlux", "y_psfFluxErr", "z", "zwarning"} <= set(matched.column_names)


def test_features_flag_non_detections_as_missing_and_select_on_the_quality_flag(walkthrough):
    folder, dp1, specz, _, summaries = walkthrough
    s = dict(summaries)["build_features"]
    assert s["output"] == str(folder / "workdir" / "features" / "dp1_ugrizy") and s["band_set"] == "ugrizy"
    assert s["rows_out"] == N_SPECZ
    flagged_z = int((specz["zflag"].to_numpy() != 0).sum())
    assert s["excluded_by_reason"]["zwarning"] == s["splits"]["excluded"] == flagged_z > 20
    ids = dict(zip(dp1["coord_ra"].to_numpy() + 0.1 / 3600, range(N_TRAIN), strict=True))
    rows = [ids[ra] for ra in specz["ra"].to_numpy()]
    no_u_or_y = (np.isnan(dp1["u_psfFlux"].to_numpy()) | np.isnan(dp1["y_psfFlux"].to_numpy()))[rows]
    assert s["flagged"]["MISSING_BAND"] == int(no_u_or_y.sum()) > 200
    assert s["flagged"]["BAD_FLUX"] == 0 and s["flagged"]["BAD_ERROR"] == 0  # not measured is not bad
    assert 0.85 < s["observed_fraction"]["lsst_u"] < 0.95 and s["observed_fraction"]["lsst_g"] == 1.0


def test_train_then_score_the_second_field_by_name(walkthrough):
    folder, _, _, field2, summaries = walkthrough
    trained = dict(summaries)["train"]
    assert trained["model_name"] == "photoz-dp1" and trained["epochs"] == 1
    assert sum(trained["counts"].values()) == N_SPECZ - dict(summaries)["build_features"]["splits"]["excluded"]
    scored = dict(summaries)["score_catalog"]
    assert scored["rows_in"] == scored["rows_out"] == N_FIELD2 and scored["band_set"] == "ugrizy"
    out = pq.read_table(folder / "workdir" / "scores" / "dp1_field2" / "dataset", partitioning=None)
    out = out.sort_by("objectId")
    assert out["objectId"].to_pylist() == sorted(field2["objectId"].to_pylist())
    z = out["z_phot_mean"].to_numpy()
    assert np.isfinite(z).all() and (out["n_observed"].to_numpy() >= 4).all()
    flags = out["flags"].to_numpy()
    no_u_or_y = np.isnan(field2["u_psfFlux"].to_numpy()) | np.isnan(field2["y_psfFlux"].to_numpy())
    assert ((flags & Flag.MISSING_BAND) > 0).sum() == int(no_u_or_y.sum()) > 100
    assert not (flags & (Flag.BAD_FLUX | Flag.BAD_ERROR | Flag.NOT_SCORED)).any()
    assert hats.read_properties(folder / "workdir" / "scores" / "dp1_field2")["photoz_model_name"] == "photoz-dp1"
