"""The pipeline's catalogs and score output as an astronomer opens them: with hats and LSDB.

A small simulated sky centred on a corner of HEALPix order-4 pixels (so its catalogs have
several partitions and pairs straddle partition borders) is crossmatched by the project
(``jobs/crossmatch.py``) and scored through the scoring kernel; hats must read every catalog's
metadata, LSDB must load the same rows, and LSDB's crossmatch must find the project's pairs.
"""


import hats  # the astro extra; `make test` installs it (no importorskip: CI cannot skip these)
import lsdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from photoz_spark import hats as photoz_hats
from photoz_spark.bands import load_bands
from photoz_spark.features.sequencing import sequence
from photoz_spark.features.stats import compute_stats
from photoz_spark.jobs import crossmatch as crossmatch_job
from photoz_spark.jobs import simulate_sky
from photoz_spark.model import BiLSTMMDN, ModelConfig
from photoz_spark.registry.artifact import PhotozModel, save_model_files
from photoz_spark.scoring.kernel import MIXTURE, score_batch

REG = load_bands()
BAND_SET = REG.band_set("sdss_wise9")
# (151.875, 30) is a corner shared by order-4 pixels: the sky spans several partitions.
SKY = ["sim.footprint.ra=151.875", "sim.footprint.dec=30.0", "sim.footprint.radius_deg=0.7",
       "sim.quasars.density_deg2=120", "sim.field.galaxy_density_deg2=1500", "sim.field.star_density_deg2=300",
       "sim.figure=false"]
CATALOGS = ("catalogs/dr16q", "catalogs/sdss", "catalogs/desi_ls", "matched/dr16q", "scores/dr16q")
KEEP = ("THING_ID", "RA", "DEC", "_healpix_29")


def read(catalog, columns=None):
    return pq.read_table(catalog / photoz_hats.DATASET_DIR, columns=columns, partitioning=None)


def write_scores(workdir, model_dir):
    """scores/dr16q as jobs/score_catalog.py writes it (its kernel, the matched table's pixels)."""
    matched = read(workdir / "matched" / "dr16q")
    raw, observed, _ = sequence(matched, BAND_SET, REG)
    config = ModelConfig(n_steps=len(BAND_SET), hidden1=8, hidden2=4, dense=8, n_components=3)
    torch.manual_seed(3)
    layout = {"band_set": BAND_SET.name, "bands": BAND_SET.names, "n_steps": len(BAND_SET), "n_channels": 2}
    save_model_files(model_dir, BiLSTMMDN(config).state_dict(),
                     {"model_config": config.to_dict(), "layout": layout, "stats": compute_stats(raw, observed, BAND_SET)})
    scored = score_batch(PhotozModel(model_dir, REG), matched.combine_chunks().to_batches()[0], KEEP)
    order = int(photoz_hats.read_properties(workdir / "matched" / "dr16q")["hats_order"])
    photoz_hats.write_hats_table(pa.Table.from_batches([scored]), workdir / "scores" / "dr16q", order=order,
                                 ra_col="RA", dec_col="DEC", catalog_name="scores_dr16q")


@pytest.fixture(scope="module")
def sky(spark, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lsdb")
    simulate_sky.main(["--workdir", str(workdir), *SKY])
    crossmatch_job.main(["--workdir", str(workdir)])
    write_scores(workdir, tmp_path_factory.mktemp("model"))
    return workdir


def test_hats_and_lsdb_open_every_catalog_with_its_rows(sky):
    for relpath in CATALOGS:
        path = sky / relpath
        rows = read(path).num_rows
        props = photoz_hats.read_properties(path)
        info = hats.read_hats(path)
        assert info.catalog_info.total_rows == int(props["hats_nrows"]) == rows > 0, relpath
        assert len(info.get_healpix_pixels()) == len((path / photoz_hats.PARTITION_INFO_FILE).read_text().split()) - 1
        catalog = lsdb.open_catalog(path)
        assert len(catalog) == rows, relpath
        assert len(catalog.compute()) == rows, relpath
    assert len(hats.read_hats(sky / "catalogs" / "sdss").get_healpix_pixels()) > 1, "the sky spans partitions"

    scores = lsdb.open_catalog(sky / "scores" / "dr16q").compute()
    assert sorted(scores["THING_ID"]) == sorted(read(sky / "catalogs" / "dr16q", ["THING_ID"])["THING_ID"].to_pylist())
    first = scores.iloc[0]
    assert all(len(first[c]) == 3 for c in MIXTURE)


def _pairs(frame, left_id, right_id):
    return dict(zip(frame[left_id].to_numpy(), frame[right_id].to_numpy(), strict=True))


def test_lsdb_crossmatch_finds_the_projects_pairs(sky):
    matched = read(sky / "matched" / "dr16q", ["THING_ID", "sdss_id", "sdss_sep_arcsec", "sdss_n_candidates"])
    has = matched["sdss_n_candidates"].to_numpy() > 0
    ours = dict(zip(matched["THING_ID"].to_numpy()[has], matched["sdss_id"].to_numpy()[has], strict=True))
    sep = dict(zip(matched["THING_ID"].to_numpy()[has], matched["sdss_sep_arcsec"].to_numpy()[has], strict=True))
    assert len(ours) > 100

    left = lsdb.open_catalog(sky / "catalogs" / "dr16q", columns=["THING_ID", "RA", "DEC"])
    sdss = read(sky / "catalogs" / "sdss", ["objID", "ra", "dec"]).to_pandas()
    # The right side with a 2" margin (LSDB needs one to match across partition borders).
    right = lsdb.from_dataframe(sdss, ra_column="ra", dec_column="dec", margin_threshold=2.0)
    xm = left.crossmatch(right, radius_arcsec=1.5, n_neighbors=1, suffixes=("", "_sdss"),
                         suffix_method="all_columns").compute()
    theirs = _pairs(xm, "THING_ID", "objID_sdss")
    assert theirs == ours
    dist = dict(zip(xm["THING_ID"].to_numpy(), xm["_dist_arcsec"].to_numpy(), strict=True))
    np.testing.assert_allclose([dist[t] for t in ours], [sep[t] for t in ours], atol=1e-4)

    # Opened as is (no margin catalog): LSDB can miss only pairs that straddle a partition border.
    plain = left.crossmatch(lsdb.open_catalog(sky / "catalogs" / "sdss", columns=["objID", "ra", "dec"]),
                            radius_arcsec=1.5, n_neighbors=1, suffixes=("", "_sdss"),
                            suffix_method="all_columns").compute()
    plain_pairs = _pairs(plain, "THING_ID", "objID_sdss")
    assert plain_pairs.items() <= ours.items()
    order = int(photoz_hats.read_properties(sky / "catalogs" / "sdss")["hats_order"])
    right_rows = read(sky / "catalogs" / "sdss", ["objID", "_healpix_29"])
    h29 = dict(zip(right_rows["objID"].to_numpy(), right_rows["_healpix_29"].to_numpy(), strict=True))
    dr16q = read(sky / "catalogs" / "dr16q", ["THING_ID", "_healpix_29"])
    left_h29 = dict(zip(dr16q["THING_ID"].to_numpy(), dr16q["_healpix_29"].to_numpy(), strict=True))
    for thing_id in set(ours) - set(plain_pairs):
        assert (photoz_hats.pixel_at_order(left_h29[thing_id], order)
                != photoz_hats.pixel_at_order(h29[ours[thing_id]], order)), thing_id


def test_lsdb_crossmatches_the_score_output_with_its_catalog(sky):
    left = lsdb.open_catalog(sky / "catalogs" / "dr16q", columns=["THING_ID", "RA", "DEC"])
    scores = lsdb.open_catalog(sky / "scores" / "dr16q", columns=["THING_ID", "RA", "DEC", "z_phot_mean"])
    xm = left.crossmatch(scores, radius_arcsec=1.0, n_neighbors=1, suffixes=("", "_scores"),
                         suffix_method="all_columns").compute()
    assert len(xm) == len(read(sky / "catalogs" / "dr16q", ["THING_ID"]))
    np.testing.assert_array_equal(xm["THING_ID"].to_numpy(), xm["THING_ID_scores"].to_numpy())
    assert (xm["_dist_arcsec"].to_numpy() < 1e-6).all()
