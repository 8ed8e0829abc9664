"""Configuration layering, the job command line, and the band registry."""

from __future__ import annotations

import numpy as np
import pytest
import speclite.filters

from photoz_spark.bands import load_bands
from photoz_spark.cli import job_parser, parse_job_args
from photoz_spark.config import ConfigError, load_config, merge, parse_override

pytestmark = pytest.mark.unit


def test_defaults_load_with_spark_section():
    config = load_config()
    assert set(config["spark"]) >= {"master", "app_name", "driver_memory", "shuffle_partitions",
                                    "arrow_batch_size", "log_level"}


def test_unknown_nested_key_names_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["spark.shuffle_partitons=3"])
    message = str(err.value)
    assert "spark.shuffle_partitons" in message
    assert "spark.shuffle_partitions" in message and "spark.master" in message


def test_unknown_top_level_key_refused():
    with pytest.raises(ConfigError, match="allowed here: .*workdir"):
        merge({"workdir": "x", "spark": {}}, {"wrokdir": "y"})


def test_an_empty_mapping_default_takes_any_keys():
    config = load_config("ingest.yaml", overrides=["ingest.columns={id: TARGETID}", "ingest.columns.z=Z_SPEC"])
    assert config["ingest"]["columns"] == {"id": "TARGETID", "z": "Z_SPEC"}
    with pytest.raises(ConfigError, match="ingest.columns: expected a mapping"):
        load_config("ingest.yaml", overrides=["ingest.columns=[id]"])
    with pytest.raises(ConfigError, match="unknown config key 'ingest.colums'"):  # only that mapping is free
        load_config("ingest.yaml", overrides=["ingest.colums.z=Z"])


def test_int_is_coerced_to_float():
    out = merge({"lr": 0.001}, {"lr": 1})
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)


def test_string_for_int_is_refused():
    with pytest.raises(ConfigError, match="n: expected int"):
        merge({"n": 10}, {"n": "abc"})


def test_bool_and_int_do_not_mix():
    with pytest.raises(ConfigError, match="true/false"):
        merge({"flag": True}, {"flag": 1})
    with pytest.raises(ConfigError, match="true/false"):
        merge({"flag": False}, {"flag": "yes"})


def test_mapping_expected_for_section():
    with pytest.raises(ConfigError, match="spark: expected a mapping"):
        merge({"spark": {"master": "local"}}, {"spark": 3})


def test_merge_leaves_base_untouched():
    base = {"spark": {"shuffle_partitions": 8}}
    merge(base, {"spark": {"shuffle_partitions": 2}})
    assert base["spark"]["shuffle_partitions"] == 8


def test_parse_override_nested_and_typed():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a.b.c=0.5") == {"a": {"b": {"c": 0.5}}}
    assert parse_override("x=[u, g]") == {"x": ["u", "g"]}
    assert parse_override("x=true") == {"x": True}
    assert parse_override("x=") == {"x": ""}


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("spark.master")


def test_override_applies_with_type():
    config = load_config(overrides=["spark.shuffle_partitions=16", "spark.master=local[3]"])
    assert config["spark"]["shuffle_partitions"] == 16
    assert config["spark"]["master"] == "local[3]"


def test_cli_options_become_overrides(tmp_path):
    parser = job_parser("test job", None)
    _args, config, workdir = parse_job_args(
        parser, ["--master", "local[1]", "--workdir", str(tmp_path), "spark.shuffle_partitions=2"]
    )
    assert config["spark"]["master"] == "local[1]"
    assert config["spark"]["shuffle_partitions"] == 2
    assert workdir.root == tmp_path.resolve()
    assert workdir.catalog("sdss") == tmp_path.resolve() / "catalogs" / "sdss"
    assert workdir.features == tmp_path.resolve() / "features"


def test_cli_bad_override_exits_with_one_line(capsys):
    parser = job_parser("test job", None)
    with pytest.raises(SystemExit) as exit_info:
        parse_job_args(parser, ["spark.nope=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'spark.nope'" in err and "Traceback" not in err


# --- bands ---------------------------------------------------------------------------------

def test_all14_has_14_bands_in_wavelength_order():
    bands = load_bands().band_set("all14")
    assert len(bands) == 14
    lambdas = [b.lambda_eff for b in bands.bands]
    assert lambdas == sorted(lambdas)
    assert bands.names.index("sdss_g") < bands.names.index("desi_g")


@pytest.mark.parametrize("name", sorted(load_bands().band_sets))
def test_every_band_set_ascends_in_wavelength(name):
    lambdas = np.array([b.lambda_eff for b in load_bands().band_set(name).bands])
    assert np.all(np.diff(lambdas) > 0)


def test_ad_hoc_band_list_is_put_in_sequence_order():
    bands = load_bands().band_set(["wise_w1", "sdss_u", "desi_g", "sdss_g"])
    assert bands.names == ["sdss_u", "sdss_g", "desi_g", "wise_w1"]


def test_unknown_band_set_lists_known_ones():
    with pytest.raises(ValueError) as err:
        load_bands().band_set("all15")
    assert "all15" in str(err.value)
    assert "all14" in str(err.value) and "ugrizy" in str(err.value)


def test_unknown_band_refused():
    with pytest.raises(ValueError, match="unknown band 'sdss_q'"):
        load_bands().band_set(["sdss_u", "sdss_q"])


@pytest.mark.parametrize("name", list(load_bands().bands))
def test_lambda_eff_matches_speclite(name):
    band = load_bands().band(name)
    lam = speclite.filters.load_filter(band.filter).effective_wavelength.to_value("Angstrom")
    assert band.lambda_eff == pytest.approx(lam, rel=0.01)


def test_shared_registry_settings_are_stated_once_and_a_job_file_may_restate_them():
    from photoz_spark.config import overlay_defaults

    for job in ("train.yaml", "score.yaml", "evaluate.yaml", "ablation.yaml"):
        mlflow = load_config(job)["mlflow"]
        assert mlflow == {"tracking_uri": "", "experiment": "photoz-spark", "model_name": "photoz-lstm-mdn",
                          "alias": "champion"}, job
    merged = overlay_defaults({"mlflow": {"experiment": "a", "alias": "champion"}},
                              {"mlflow": {"experiment": "b"}, "score": {"version": ""}})
    assert merged == {"mlflow": {"experiment": "b", "alias": "champion"}, "score": {"version": ""}}
    with pytest.raises(ConfigError, match="unknown config key 'score.model_name'"):
        load_config("score.yaml", overrides=["score.model_name=x"])
    assert load_config("score.yaml", overrides=["mlflow.model_name=x"])["mlflow"]["model_name"] == "x"


def test_auto_settings_take_true_and_false():
    """train.use_gpu is auto | true | false: the override train.use_gpu=false must reach the job."""
    assert merge({"use_gpu": "auto"}, {"use_gpu": False}) == {"use_gpu": False}
    assert merge({"use_gpu": "auto"}, {"use_gpu": True}) == {"use_gpu": True}
    with pytest.raises(ConfigError, match="expected str"):
        merge({"name": "x"}, {"name": True})


def test_key_value_overrides_before_and_after_options():
    parser = job_parser("test", "train.yaml")
    _, config, workdir = parse_job_args(parser, ["train.features=mine", "--workdir", "/tmp/w", "train.max_epochs=1"])
    assert config["train"]["features"] == "mine" and config["train"]["max_epochs"] == 1 and str(workdir.root) == "/tmp/w"


def test_shuffle_partitions_auto_follows_the_cluster_cores():
    """spark.shuffle_partitions=auto (the default): 4 per core, at least 8; a number stays that number."""
    from photoz_spark.spark import shuffle_partitions

    assert load_config()["spark"]["shuffle_partitions"] == "auto"
    assert [shuffle_partitions("auto", cores) for cores in (1, 2, 16, 256)] == [8, 8, 64, 1024]
    assert shuffle_partitions(16, 256) == 16
    assert shuffle_partitions("16", 2) == 16
    for bad in (0, "many", True, -3, 2.5):
        with pytest.raises(ConfigError, match="spark.shuffle_partitions must be a whole number >= 1 or auto"):
            shuffle_partitions(bad, 2)
