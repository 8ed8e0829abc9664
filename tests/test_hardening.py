"""Hardening: no output escapes the work directory or lands on a job's input; bad inputs are one line.

The matrix runs each job's main on a bad input and asserts the one-line error (exit code 2, one
stderr line) and that nothing was written where it must not be. Every case here is refused
before Spark starts, so the module needs no session. Scoring's bad catalogs (empty, truncated
file, string flux) need a trained model and live in tests/test_score.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from photoz_spark import hats
from photoz_spark.errors import InputError
from photoz_spark.jobs import (
    ablation,
    build_features,
    crossmatch,
    evaluate,
    ingest_catalog,
    score_catalog,
    simulate_sky,
    train,
)
from photoz_spark.paths import check_output, check_setting_names, safe_name
from photoz_spark.toy import toy_matched_table

pytestmark = pytest.mark.unit

JOBS = {"score": score_catalog, "train": train, "evaluate": evaluate, "crossmatch": crossmatch,
        "features": build_features, "ingest": ingest_catalog, "simulate": simulate_sky, "ablation": ablation}


def tree_digest(root: Path) -> str:
    """A digest of every file's path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def workdir(tmp_path) -> Path:
    wd = tmp_path / "workdir"
    hats.write_hats_table(toy_matched_table(40, 1), wd / "matched" / "X", order=3, ra_col="RA", dec_col="DEC",
                          catalog_name="X")
    return wd


def one_line_error(capsys, job: str, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        JOBS[job].main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


# (job, arguments after --workdir, a piece of the message). Every one must be refused before
# anything is written.
BAD_NAMES = [
    ("score", ["--input", "matched/X", "score.output=../matched/X"], "score.output='../matched/X'"),
    ("score", ["--input", "matched/X", "score.output=/tmp/photoz-abs"], "score.output='/tmp/photoz-abs'"),
    ("score", ["--input", "matched/.."], "score.input='..'"),
    ("score", ["--input", "catalogs/../../x"], "score.input must be catalogs/<name> or matched/<run>"),
    ("train", ["mlflow.model_name=../../x"], "mlflow.model_name='../../x'"),
    ("train", ["mlflow.model_name=/tmp/photoz-abs"], "mlflow.model_name='/tmp/photoz-abs'"),
    ("train", ["--band-set", "../x"], "train.band_set='../x'"),
    ("evaluate", ["--model-name", "../x"], "mlflow.model_name='../x'"),
    ("crossmatch", ["crossmatch.run=../catalogs/dr16q"], "crossmatch.run='../catalogs/dr16q'"),
    ("crossmatch", ["crossmatch.right=[../x]"], "crossmatch.right='../x'"),
    ("features", ["features.matched=../../etc"], "features.matched='../../etc'"),
    ("features", ["--band-set", ".hidden"], "features.band_set='.hidden'"),
    ("ingest", ["--input", "nothing.fits", "--survey", "sdss_dr16q", "--name", "../matched/X"], "ingest.name='../matched/X'"),
    ("simulate", ["sim.catalogs=[../x]"], "sim.catalogs='../x'"),
    ("ablation", ["ablation.model_prefix=../x"], "ablation.model_prefix='../x'"),
    ("ablation", ["--band-sets", "optical8,../x"], "unknown band set '../x'"),
]


@pytest.mark.parametrize("job, args, message", BAD_NAMES, ids=[f"{j}:{a[-1]}" for j, a, _ in BAD_NAMES])
def test_unsafe_names_are_refused_before_anything_is_written(workdir, capsys, job, args, message):
    before = tree_digest(workdir)
    err = one_line_error(capsys, job, ["--workdir", str(workdir), *args])
    if "='" in message:  # an unsafe name: the setting and the value are named
        key, value = message.split("=", 1)
        assert f"{key} must be a folder name" in err and f"got {value}" in err, err
    else:
        assert message in err
    assert tree_digest(workdir) == before, "a refused job must not write anything"
    assert sorted(p.name for p in workdir.iterdir()) == ["matched"]
    assert not Path("/tmp/photoz-abs").exists()


def test_score_output_over_its_input_through_a_symlink_is_refused(workdir, capsys):
    """scores/ pointing at matched/: the default output scores/X would be the input matched/X."""
    (workdir / "scores").symlink_to(workdir / "matched")
    before = tree_digest(workdir / "matched")
    err = one_line_error(capsys, "score", ["--workdir", str(workdir), "--input", "matched/X"])
    assert "would overwrite the job's input" in err and "matched/X" in err
    assert tree_digest(workdir / "matched") == before


def test_ingest_over_its_own_input_is_refused(tmp_path, capsys):
    """An input file inside catalogs/<name>: replacing the catalog would delete the file being read."""
    from test_ingest import dr16q_columns, write_fits

    wd = tmp_path / "wd"
    own = wd / "catalogs" / "dr16q"
    own.mkdir(parents=True)
    source = write_fits(own / "DR16Q_v4.fits", dr16q_columns())
    before = source.read_bytes()
    err = one_line_error(capsys, "ingest", ["--workdir", str(wd), "--input", str(source), "--survey", "sdss_dr16q"])
    assert "ingest.name: output" in err and "would overwrite the job's input" in err
    assert source.read_bytes() == before


def test_train_with_an_escaping_model_name_never_starts(tmp_path, capsys):
    wd = tmp_path / "deep" / "workdir"
    wd.mkdir(parents=True)
    one_line_error(capsys, "train", ["--workdir", str(wd), "mlflow.model_name=../../x"])
    assert not (tmp_path / "x").exists() and not any(wd.iterdir()), "nothing trained, nothing written"


def test_safe_name_and_check_output():
    assert safe_name("photoz-lstm-mdn_v2.1", "k") == "photoz-lstm-mdn_v2.1"
    for bad in ("", ".", "..", "../x", "a/b", "/abs", "-x", "x y", "x\n", "é", "x" * 201):
        with pytest.raises(InputError):
            safe_name(bad, "k")
    check_setting_names({"mlflow": {"model_name": "ok"}, "score": {"output": ""}, "sim": {"catalogs": ["a", "b"]}})
    with pytest.raises(InputError, match="sim.catalogs"):
        check_setting_names({"sim": {"catalogs": ["a", "../b"]}})


def test_check_output_refuses_escapes_and_overlaps(tmp_path):
    root = tmp_path / "wd"
    (root / "matched" / "X").mkdir(parents=True)
    assert check_output(root / "scores" / "a", root, [root / "matched" / "X"]) == root / "scores" / "a"
    for out in (tmp_path / "elsewhere", root, root / "scores" / ".." / ".." / "y"):
        with pytest.raises(InputError, match="outside the work directory"):
            check_output(out, root)
    for out, source in ((root / "matched" / "X", root / "matched" / "X"),            # the input itself
                        (root / "matched" / "X" / "sub", root / "matched" / "X"),    # inside it
                        (root / "matched", root / "matched" / "X" / "file.parquet")):  # would delete it
        with pytest.raises(InputError, match="would overwrite the job's input"):
            check_output(out, root, [source])


class Payload:
    """Not a tensor: torch refuses to unpickle it with weights_only=True."""


def test_weights_files_that_are_not_plain_tensors_are_one_line(tmp_path):
    from photoz_spark.registry.artifact import load_weights

    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pt")
    assert load_weights(tmp_path / "ok.pt", "cpu")["w"].shape == (2,)
    torch.save({"payload": Payload()}, tmp_path / "pickled.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:300])
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    cases = {"pickled.pt": "holds pickled Python objects", "truncated.pt": "not a readable torch weights file",
             "garbage.pt": "not a readable torch weights file", "missing.pt": "not a readable torch weights file"}
    for name, message in cases.items():
        with pytest.raises(InputError) as info:
            load_weights(tmp_path / name, "cpu")
        text = str(info.value)
        assert message in text and str(tmp_path / name) in text, text
        assert len(text.splitlines()) == 1 and "weights_only=False" not in text


def test_a_symlinked_output_is_replaced_not_followed(tmp_path):
    """A linked catalog (catalogs/x -> elsewhere): rerunning replaces the link, never its target."""
    root, elsewhere = tmp_path / "wd", tmp_path / "external"
    elsewhere.mkdir()
    (root / "catalogs").mkdir(parents=True)
    (root / "catalogs" / "x").symlink_to(elsewhere)
    assert check_output(root / "catalogs" / "x", root, [elsewhere]) == root / "catalogs" / "x"


def test_band_definitions_that_disagree_with_the_model_are_named():
    from dataclasses import replace

    from photoz_spark.bands import load_bands
    from photoz_spark.registry.artifact import band_definitions, bands_from_definitions
    from photoz_spark.registry.bandcheck import band_differences, check_bands_agree

    bands = load_bands()
    meta = {"bands": band_definitions(bands, bands.band_set("sdss_wise9"))}
    model_bands, model_set = bands_from_definitions(meta["bands"])
    check_bands_agree(meta, model_bands, model_set, bands, "conf/bands.yaml")  # the same file: agrees
    w1, u = bands.band("wise_w1"), bands.band("sdss_u")
    other = replace(bands, bands={**bands.bands, "wise_w1": replace(w1, unit="nJy"),
                                 "sdss_u": replace(u, flux="PSF_FLUX_U", err_kind="sigma")})
    assert band_differences(model_bands, model_set, other) == [
        "sdss_u flux PSF_FLUX_U here, psfFlux_u in the model", "sdss_u err_kind sigma here, ivar in the model",
        "wise_w1 unit nJy (1e-09 Jy) here, nanomaggy (3.631e-06 Jy) in the model"]
    with pytest.raises(InputError, match="the bands file my.yaml disagrees with the model's band definitions"):
        check_bands_agree(meta, model_bands, model_set, other, "my.yaml")
    check_bands_agree({}, model_bands, model_set, other, "my.yaml")  # an old model reads the bands file itself


# --- damaged catalogs given to build_features and crossmatch: one line naming the file ---
# (empty ones are answers, not errors: tests/test_empty_inputs.py)

def _largest_file(catalog: Path) -> Path:
    return max((catalog / hats.DATASET_DIR).rglob("Npix=*.parquet"), key=lambda p: p.stat().st_size)


def _truncate(catalog: Path) -> Path:
    victim = _largest_file(catalog)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


def _string_column(catalog: Path, column: str) -> Path:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    victim = _largest_file(catalog)
    table = pq.read_table(victim)
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, column, pc.cast(table[column], pa.string())), victim)
    return victim


FEATURES = ["features.matched=X", "--band-set", "sdss_wise9"]


def test_features_refuse_a_truncated_pixel_file_naming_it(workdir, capsys):
    victim = _truncate(workdir / "matched" / "X")
    err = one_line_error(capsys, "features", ["--workdir", str(workdir), *FEATURES])
    assert f"data file {victim} is unreadable" in err and not (workdir / "features").exists()


def test_features_refuse_a_pixel_file_with_a_string_flux_naming_both(workdir, capsys):
    victim = _string_column(workdir / "matched" / "X", "psfFlux_g")
    err = one_line_error(capsys, "features", ["--workdir", str(workdir), *FEATURES])
    assert f"data file {victim}: column psfFlux_g is string, not float" in err


def test_crossmatch_refuses_a_truncated_catalog(workdir, capsys):
    table = toy_matched_table(40, 1)
    dr16q = table.select(["THING_ID", "RA", "DEC", hats.HEALPIX_COLUMN])
    sdss = table.rename_columns([{"THING_ID": "objID", "RA": "ra", "DEC": "dec"}.get(c, c) for c in table.column_names])
    hats.write_hats_table(dr16q, workdir / "catalogs" / "dr16q", order=3, ra_col="RA", dec_col="DEC",
                          catalog_name="dr16q")
    hats.write_hats_table(sdss, workdir / "catalogs" / "sdss", order=3, ra_col="ra", dec_col="dec",
                          catalog_name="sdss")
    victim = _truncate(workdir / "catalogs" / "sdss")
    err = one_line_error(capsys, "crossmatch", ["--workdir", str(workdir), "crossmatch.right=[sdss]"])
    assert f"catalog sdss: data file {victim} is unreadable" in err and not (workdir / "matched" / "dr16q").exists()
