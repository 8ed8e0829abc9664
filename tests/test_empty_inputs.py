"""An empty input is an answer, not an error: an empty output with the job's usual summary.

A 0-row left catalog crossmatches to a valid 0-row matched catalog (the schema and HATS
properties of a normal run's, readable by the next job); a 0-row matched catalog gives a 0-row
features catalog; training on it is refused in one line naming it ("no training rows").
"""

from __future__ import annotations

import pytest

from photoz_spark import hats
from photoz_spark.jobs import build_features, crossmatch, train
from photoz_spark.toy import toy_matched_table

# Properties whose values follow the rows (counts, sizes, dates); every other one must be equal.
ROW_DEPENDENT = {"hats_nrows", "hats_max_rows", "moc_sky_fraction", "hats_estsize", "hats_creation_date"}


def _catalogs(workdir, left_rows: int) -> None:
    """dr16q (``left_rows`` rows) and two right catalogs holding every sdss_wise9 band."""
    table = toy_matched_table(40, 1)
    dr16q = table.select(["THING_ID", "RA", "DEC", "Z", "ZWARNING", hats.HEALPIX_COLUMN]).slice(0, left_rows)
    hats.write_hats_table(dr16q, workdir / "catalogs" / "dr16q", order=3, ra_col="RA", dec_col="DEC",
                          catalog_name="dr16q")
    for name, names in (("sdss", {"THING_ID": "objID", "RA": "ra", "DEC": "dec"}), ("desi_ls", {"THING_ID": "LS_ID"})):
        right = table.drop_columns(["Z", "ZWARNING", "flags"]).rename_columns(
            [names.get(c, c) for c in table.drop_columns(["Z", "ZWARNING", "flags"]).column_names])
        hats.write_hats_table(right, workdir / "catalogs" / name, order=3, ra_col=names.get("RA", "RA"),
                              dec_col=names.get("DEC", "DEC"), catalog_name=name)


@pytest.fixture(scope="module")
def empty_chain(spark, tmp_path_factory):
    """A normal crossmatch (run ``full``), then dr16q emptied and crossmatched (run ``dr16q``)."""
    workdir = tmp_path_factory.mktemp("empty")
    base = ["--workdir", str(workdir), "crossmatch.right=[sdss,desi_ls]"]
    _catalogs(workdir, 40)
    full = crossmatch.main([*base, "crossmatch.run=full"])
    _catalogs(workdir, 0)
    return workdir, full, base


def test_an_empty_left_catalog_crossmatches_to_an_empty_matched_catalog(spark, empty_chain, capsys):
    workdir, full, base = empty_chain
    capsys.readouterr()
    summary = crossmatch.main(base)
    out = capsys.readouterr().out
    assert full["rows_in"] == 40 and full["per_catalog"]["sdss"]["matched"] == 40
    assert summary["rows_in"] == summary["rows_out"] == 0
    assert summary["per_catalog"] == {name: {"matched": 0, "unmatched": 0, "ambiguous": 0, "match_rate": 0.0}
                                      for name in ("sdss", "desi_ls")}
    assert set(summary["flags"].values()) == {0}
    assert "dr16q                0 rows in, 0 rows out" in out and "flagged rows  none" in out
    matched, reference = workdir / "matched" / "dr16q", workdir / "matched" / "full"
    assert hats.read_schema(matched) == hats.read_schema(reference)
    props, ref_props = hats.read_properties(matched), hats.read_properties(reference)
    assert props["hats_nrows"] == "0" and (matched / hats.PARTITION_INFO_FILE).is_file()
    assert {k: v for k, v in props.items() if k not in ROW_DEPENDENT | {"obs_collection"}} == \
        {k: v for k, v in ref_props.items() if k not in ROW_DEPENDENT | {"obs_collection"}}
    assert hats.check_data_files(matched) == 0 and hats.read_hats(spark, matched).count() == 0
    assert not [p for p in workdir.iterdir() if p.name.startswith(".")]


def test_empty_matched_gives_empty_features_and_training_refuses_them(spark, empty_chain, capsys):
    workdir, _, base = empty_chain
    if hats.read_properties(workdir / "matched" / "dr16q")["hats_nrows"] != "0":
        crossmatch.main(base)  # run on its own: the empty crossmatch first
    capsys.readouterr()
    argv = ["--workdir", str(workdir), "--band-set", "sdss_wise9"]
    summary = build_features.main(argv)
    out = capsys.readouterr().out
    assert summary["rows_in"] == summary["rows_out"] == 0 and summary["partitions"] == 0
    assert summary["splits"] == {"train": 0, "validation": 0, "test": 0, "excluded": 0}
    assert set(summary["observed_fraction"].values()) == {0.0}
    assert "output        " in out and "0 rows, 0 partitions" in out and "splits        train 0 (0.0 %)" in out
    features = workdir / "features" / "sdss_wise9"
    assert hats.read_properties(features)["hats_nrows"] == "0"
    assert {"split", "features", "observed"} <= set(hats.read_schema(features).names)
    assert (features / "stats.json").is_file() and (features / "layout.json").is_file()
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, "train.num_processes=1"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: no training rows in features/sdss_wise9 (") and "0 rows" in err, err
    assert not (workdir / "train").exists(), "a refused training leaves no folder"
