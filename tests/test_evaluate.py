"""jobs/evaluate.py and jobs/ablation.py on tiny data: one ablation of two band sets trains the models."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from photoz_spark import hats
from photoz_spark.evaluate import ablation as abl
from photoz_spark.features.catalog import FeaturesCatalog
from photoz_spark.jobs import ablation as ablation_job
from photoz_spark.jobs import evaluate as evaluate_job
from photoz_spark.toy import toy_matched_table

TINY_TRAIN = ("ablation.train_overrides=[model.hidden1=16, model.hidden2=8, model.dense=16, model.n_components=3, "
              "train.batch_size=64, train.max_epochs=2, train.lr=0.01]")
BAND_SETS = ("optical8", "optical_wise12")
MODEL = "photoz-lstm-mdn-optical8"


@pytest.fixture(scope="module")
def workdir(spark, tmp_path_factory):
    wd = tmp_path_factory.mktemp("evaluate")
    hats.write_hats_table(toy_matched_table(700, 3), wd / "matched" / "dr16q", order=5, ra_col="RA",
                          dec_col="DEC", catalog_name="dr16q")
    return wd


@pytest.fixture(scope="module")
def ablation(workdir):
    return ablation_job.main(["--workdir", str(workdir), "--band-sets", ",".join(BAND_SETS), TINY_TRAIN])


@pytest.fixture(scope="module")
def evaluated(ablation, workdir):
    return evaluate_job.main(["--workdir", str(workdir), "--model-name", MODEL])


def split_counts(workdir, band_set: str) -> dict:
    catalog = FeaturesCatalog(workdir / "features" / band_set)
    return {s: catalog.count(s) for s in ("train", "validation", "test")}


def test_evaluate_writes_table1_figures_and_logs_to_the_model_run(evaluated, workdir, capsys):
    counts = split_counts(workdir, "optical8")
    assert {row["split"]: row["n"] for row in evaluated["table1"]} == counts
    report_dir = workdir / "reports" / f"{MODEL}-v1"
    assert evaluated["report"] == report_dir / "report.md"
    names = {"fig3_zphot_zspec.png", "fig4_crps.png", "fig5_example_pdfs.png", "fig6_pit.png", "completeness.png"}
    assert {p.name for p in evaluated["figures"]} == names and all(p.stat().st_size > 10_000 for p in evaluated["figures"])
    text = evaluated["report"].read_text()
    for heading in ("## Table 1", "## Metrics per z_spec bin", "## Recalibration", "fitted here on the validation split",
                    "## Completeness"):
        assert heading in text
    assert evaluated["calibration"]["source"] == "validation" and len(evaluated["calibration"]["rows"]) == 2
    assert evaluated["calibration"]["method"] == "mixture" and evaluated["calibration"]["nodes"] >= 2

    from mlflow.tracking import MlflowClient
    client = MlflowClient(evaluated["tracking_uri"])
    logged = {a.path for a in client.list_artifacts(evaluated["run_id"], "evaluation")}
    assert {f"evaluation/{n}" for n in (*names, "report.md", "table1.csv")} <= logged
    run_metrics = client.get_run(evaluated["run_id"]).data.metrics
    assert run_metrics["eval_test_n"] == counts["test"] and run_metrics["eval_train_n"] == counts["train"]
    test_row = evaluated["table1"][-1]
    assert run_metrics["eval_test_sigma_nmad"] == pytest.approx(test_row["sigma_nmad"])
    # evaluation feeds the network what training fed it: the same model on the same split
    # gives training's own test metrics (float32 vs float64 standardisation aside)
    assert run_metrics["test_crps"] == pytest.approx(test_row["crps"], rel=1e-3)
    assert run_metrics["test_sigma_nmad"] == pytest.approx(test_row["sigma_nmad"], rel=1e-3)
    assert "eval_test_pit_ks_val_fit_recalibrated" in run_metrics
    # Completeness: keeping everything is Table 1 (the model has no calibration: the network's zConf);
    # a stricter zConf cut keeps fewer objects at a higher zConf threshold.
    rows = evaluated["completeness"]["rows"]
    assert [r["kept"] for r in rows] == [1.0, 0.9, 0.8, 0.7, 0.5] and evaluated["completeness"]["pdf"] == "network (raw)"
    assert rows[0]["n"] == counts["test"] and rows[-1]["n"] == -(-counts["test"] // 2)
    assert run_metrics["eval_test_f_out_c100"] == pytest.approx(test_row["f_out"])
    assert run_metrics["eval_test_sigma_nmad_c100"] == pytest.approx(test_row["sigma_nmad"])
    assert run_metrics["eval_test_f_out_c50"] == pytest.approx(rows[-1]["f_out"])
    thresholds = [run_metrics[f"eval_test_z_conf_min_c{c}"] for c in (100, 90, 80, 70, 50)]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    evaluate_job.print_summary(evaluated)
    printed = capsys.readouterr().out
    assert "completeness  cut on zConf" in printed and "recalibration (fitted on validation" in printed


def test_rerun_replaces_the_report(evaluated, workdir):
    stray = evaluated["report"].parent / "stray.txt"
    stray.write_text("from an earlier run")
    again = evaluate_job.main(["--workdir", str(workdir), "--model-name", MODEL, "--version", "1",
                               "evaluate.log_to_mlflow=false"])
    assert again["report"] == evaluated["report"] and not stray.exists()
    assert not list((workdir / "reports").glob(".*")), "no staging folder is left behind"
    assert again["table1"] == evaluated["table1"]


def test_model_calibration_is_shown_before_and_after(ablation, workdir, tmp_path):
    from photoz_spark.evaluate.run import EvalSettings, evaluate_model, write_report
    from photoz_spark.model.calibration import PitCalibration
    from photoz_spark.registry.artifact import PhotozModel
    from photoz_spark.registry.tracking import download_model

    model = PhotozModel(download_model(f"models:/{MODEL}/1"))
    catalog = FeaturesCatalog(workdir / "features" / "optical8")
    raw = evaluate_model(model, catalog, EvalSettings(splits=("validation", "test")))
    model.calibration = PitCalibration.fit(raw.results["validation"].pit, 10)   # as train.recalibrate stores it
    evaluation = evaluate_model(model, catalog, EvalSettings(splits=("test",)))
    cal = evaluation.calibration
    assert cal["source"] == "model" and [r["pdf"] for r in cal["rows"]] == ["network (raw)", "recalibrated"]
    assert cal["rows"][0]["pit_ks"] == pytest.approx(raw.table1[1]["pit_ks"])
    info = {"name": MODEL, "version": "1", "model_uri": "models:/x/1", "run_id": "r", "band_set": "optical8",
            "bands": model.meta["layout"]["bands"], "features": str(catalog.directory), "evaluated": "now"}
    written = write_report(evaluation, info, tmp_path / "report")
    assert "The model carries a recalibration (PIT map, 10 knots" in written["report"].read_text()

    # A mixture recalibration (train.recalibration=mixture): the completeness table cuts on its zConf.
    from photoz_spark.model.calibration import MixtureCalibration
    model.calibration = raw.calibration["fitted"]   # the what-if fitted on validation (evaluate.recalibration)
    assert isinstance(model.calibration, MixtureCalibration)
    evaluation = evaluate_model(model, catalog, EvalSettings(splits=("test",)))
    assert evaluation.calibration["source"] == "model" and evaluation.calibration["method"] == "mixture"
    test = evaluation.test
    assert evaluation.completeness["pdf"] == "recalibrated (model's)"
    assert evaluation.completeness["rows"][0]["z_conf_min"] == pytest.approx(test.calibrated["z_conf"].min())
    assert not np.allclose(test.calibrated["z_conf"], test.z_conf)
    written = write_report(evaluation, info, tmp_path / "report2")
    assert "calibrated mixture" in written["report"].read_text()
    model.calibration = None


def test_ablation_table2_identical_splits_and_ordering_checks(ablation, workdir):
    rows = {r["band_set"]: r for r in ablation["table2"]}
    assert list(rows) == list(BAND_SETS)
    assert rows["optical8"]["n_bands"] == 8 and rows["optical_wise12"]["n_bands"] == 12
    for band_set in BAND_SETS:
        assert rows[band_set]["n"] == split_counts(workdir, band_set)["test"]
        assert np.isfinite([rows[band_set][k] for k in ("sigma_nmad", "f_out", "bias", "mse", "mae", "crps")]).all()
    shared = ablation["split_agreement"]["optical_wise12"]
    assert shared["disagree"] == 0 and shared["shared"] == 700
    checks = ablation["checks"]
    assert len(checks) == 5 and all(c["text"][0] in "✓✗–" for c in checks)
    assert checks[0]["status"] == checks[1]["status"] == "–"          # all14 is not in this ablation
    assert checks[2]["status"] in "✓✗" and checks[3]["status"] in "✓✗"   # optical8 worst f_out; WISE helps
    report_dir = workdir / "reports" / "ablation"
    text = (report_dir / "ablation.md").read_text()
    assert all(c["text"] in text for c in checks) and "| optical_wise12 | 12 |" in text
    assert (report_dir / "fig7_zphot_grid.png").stat().st_size > 10_000
    assert (report_dir / "table2.csv").read_text().count("\n") == 3


def test_ablation_rerun_skips_what_exists(ablation, workdir):
    again = ablation_job.main(["--workdir", str(workdir), "--band-sets", ",".join(BAND_SETS), TINY_TRAIN,
                               "--skip-existing"])
    assert all(s["features"] == "kept" and s["model"] == "kept v1" for s in again["steps"].values())
    assert [r["sigma_nmad"] for r in again["table2"]] == pytest.approx([r["sigma_nmad"] for r in ablation["table2"]])


def test_ordering_checks_follow_the_paper():
    def row(name, sigma, f_out):
        return {"band_set": name, "n": 10_000, "sigma_nmad": sigma, "f_out": f_out}
    paper = [row("all14", 0.037, 0.034), row("optical_wise12", 0.040, 0.050), row("optical_galex10", 0.050, 0.10),
             row("optical8", 0.068, 0.206)]
    assert [c["status"] for c in abl.ordering_checks(paper)] == ["✓"] * 5
    swapped = [row("all14", 0.070, 0.21), *paper[1:]]
    checks = abl.ordering_checks(swapped)
    assert checks[0]["status"] == "✗" and "because" in checks[0]["text"] and "optical_wise12" in checks[0]["text"]
    assert checks[2]["status"] == "✗"                                 # all14 now has the highest f_out
    close = [row("optical8", 0.0500, 0.10), row("optical_wise12", 0.0501, 0.10)]
    assert "within the statistical noise" in abl.ordering_checks(close)[3]["text"]
    # Beyond the noise: under-training is named when a model stopped at max_epochs, not early.
    unfinished = [{**swapped[0], "stopped_early": False, "best_epoch": 14, "epochs_run": 15}, *paper[1:]]
    text = abl.ordering_checks(unfinished)[0]["text"]
    assert "under-trained" in text and "all14 best epoch 14 of 15" in text and "max_epochs" in text
    converged = [{**r, "stopped_early": True} for r in unfinished]
    assert "both models trained to early stopping" in abl.ordering_checks(converged)[0]["text"]


def test_split_disagreement_is_refused():
    class Fake:
        def __init__(self, splits):
            self.table = pa.table({"id": [1, 2, 3], "split": splits})

        def id_splits(self):
            return self.table

    with pytest.raises(ValueError, match="disagrees with features/a on 1 of 3 shared ids"):
        abl.split_agreement({"a": Fake(["train", "test", "train"]), "b": Fake(["train", "train", "train"])})


def _features_without_test(workdir):
    """A copy of features/optical8 whose test rows are relabelled validation."""
    target = workdir / "features" / "notest"
    shutil.copytree(workdir / "features" / "optical8", target, dirs_exist_ok=True)
    for path in (target / hats.DATASET_DIR).rglob("*.parquet"):
        table = pq.read_table(path, partitioning=None)
        split = pc.if_else(pc.equal(table["split"], "test"), "validation", table["split"])
        pq.write_table(table.set_column(table.schema.get_field_index("split"), "split", split), path)
    return "features/notest"


@pytest.mark.parametrize("args, message", [
    (["--model-name", "nope"], "model 'nope' alias 'champion' not found in the registry"),
    (["--model-name", MODEL, "--version", "9"], "version 9 not found"),
    (["--model-name", MODEL, "--features", "features/nothing"], "no features at"),
    (["--model-name", MODEL, "--features", "features/optical_wise12"], "the model was trained on 'optical8'"),
    (["--model-name", MODEL, "evaluate.splits=[train]"], "must include 'test'"),
    (["--model-name", MODEL, "--features", "EMPTY"], "the test split of"),
])
def test_evaluate_bad_input_is_one_line(ablation, workdir, capsys, args, message):
    if "EMPTY" in args:
        args = [a if a != "EMPTY" else _features_without_test(workdir) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_job.main(["--workdir", str(workdir), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_ablation_unknown_band_set_refused(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ablation_job.main(["--workdir", str(workdir), "--band-sets", "optical8,nope"])
    assert exit_info.value.code == 2 and "unknown band set 'nope'" in capsys.readouterr().err
