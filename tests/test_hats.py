"""The HATS-like catalog layout: pixel indices, Spark and pyarrow writers, reads, atomic replace."""

from __future__ import annotations

import re
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from photoz_spark import hats

ORDER = 2


def sky_table(n: int = 3000, seed: int = 1) -> pa.Table:
    """Random points over the whole sphere plus the awkward ones: RA 0/360, the poles."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    edge_ra = np.array([0.0, 1e-9, 359.999999, 360.0, 0.0, 180.0, 10.0, 200.0, 359.5, 0.5])
    edge_dec = np.array([0.0, 45.0, -45.0, 10.0, 90.0, -90.0, 89.5, -89.5, 89.99, -89.99])
    ra, dec = np.concatenate([ra, edge_ra]), np.concatenate([dec, edge_dec])
    ids = rng.permutation(len(ra)).astype(np.int64) + 1000
    return pa.table({
        "id": ids, "ra": ra, "dec": dec,
        "mag": rng.normal(20, 1, len(ra)).astype(np.float32),
        "_healpix_29": hats.healpix29(ra, dec),
    })


def data_files(catalog: Path) -> dict[int, Path]:
    files = {}
    for path in (catalog / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet"):
        order, ndir, npix = map(int, re.findall(r"\d+", str(path.relative_to(catalog / "dataset"))))
        assert order == ORDER and ndir == (npix // 10_000) * 10_000
        assert npix not in files
        files[npix] = path
    return files


def check_catalog(catalog: Path, table: pa.Table, name: str) -> None:
    """Everything a HATS reader relies on, checked against the input table."""
    for part in ("properties", "partition_info.csv", "dataset/_common_metadata", "dataset/_metadata"):
        assert (catalog / part).is_file(), part
    files = data_files(catalog)
    total = 0
    ids = []
    for npix, path in files.items():
        part = pq.read_table(path)
        h29 = part["_healpix_29"].to_numpy()
        assert part.column_names == table.column_names  # no helper columns left behind
        assert np.all(hats.pixel_at_order(h29, ORDER) == npix)
        assert np.all(np.diff(h29) >= 0)
        total += part.num_rows
        ids.extend(part["id"].to_pylist())
    assert total == table.num_rows
    assert sorted(ids) == sorted(table["id"].to_pylist())

    info = np.loadtxt(catalog / "partition_info.csv", delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    assert (catalog / "partition_info.csv").read_text().startswith("Norder,Npix\n")
    assert np.all(info[:, 0] == ORDER)
    assert list(info[:, 1]) == sorted(files)

    meta = pq.read_metadata(catalog / "dataset" / "_metadata")
    assert meta.num_rows == table.num_rows
    paths = {meta.row_group(i).column(0).file_path for i in range(meta.num_row_groups)}
    assert paths == {hats.pixel_relpath(ORDER, n) for n in files}
    assert pq.read_schema(catalog / "dataset" / "_common_metadata").names == table.column_names

    props = hats.read_properties(catalog)
    assert props["obs_collection"] == name
    assert props["dataproduct_type"] == "object"
    assert int(props["hats_nrows"]) == table.num_rows
    assert int(props["hats_order"]) == ORDER
    assert (props["hats_col_ra"], props["hats_col_dec"]) == ("ra", "dec")
    assert props["hats_col_healpix"] == "_healpix_29"
    assert props["photoz_columns"].split(",") == table.column_names
    assert int(props["hats_max_rows"]) == max(pq.read_metadata(p).num_rows for p in files.values())


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


# --- pixel indices -------------------------------------------------------------------------

@pytest.mark.parametrize("order", [0, 3, 8, 14])
def test_healpix29_agrees_with_healpy_at_lower_orders(order):
    table = sky_table(500)
    ra, dec = table["ra"].to_numpy(), table["dec"].to_numpy()
    expected = hp.ang2pix(2**order, ra, dec, nest=True, lonlat=True)
    assert np.array_equal(hats.pixel_at_order(hats.healpix29(ra, dec), order), expected)


def test_healpix29_known_values():
    h29 = hats.healpix29([0.0, 360.0, 90.0, 45.0, 225.0], [90.0, 0.0, 0.0, 41.8, -41.8])
    assert h29.dtype == np.int64
    assert np.all((h29 >= 0) & (h29 < 12 * 4**29))
    assert h29[0] >> 58 in (0, 1, 2, 3)  # north pole: a north polar base pixel
    assert hats.healpix29(0.0, 0.0) == h29[1]  # RA wraps
    # Base-pixel centres (nested order 0): equator at RA 90 is 5, the others 0 and 10.
    assert hats.pixel_at_order(h29[2:], 0).tolist() == [5, 0, 10]
    assert hats.pixel_at_order(h29, 29).tolist() == h29.tolist()


def test_healpix29_refuses_nan():
    with pytest.raises(ValueError, match="finite"):
        hats.healpix29([1.0, np.nan], [0.0, 0.0])


def test_order_out_of_range_refused():
    with pytest.raises(ValueError, match="0..29"):
        hats.pixel_at_order(1, 30)


# --- pyarrow writer ------------------------------------------------------------------------

def test_write_hats_table_layout(tmp_path):
    table = sky_table()
    summary = hats.write_hats_table(table, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec",
                                    catalog_name="sky", extra_properties={"photoz_survey": "test"})
    check_catalog(tmp_path / "cat", table, "sky")
    assert summary["n_rows"] == table.num_rows
    assert summary["n_partitions"] == len(data_files(tmp_path / "cat"))
    assert hats.read_properties(tmp_path / "cat")["photoz_survey"] == "test"
    assert no_leftovers(tmp_path)


def test_write_hats_table_rerun_replaces(tmp_path):
    hats.write_hats_table(sky_table(), tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec",
                          catalog_name="first")
    smaller = sky_table(200, seed=2)
    hats.write_hats_table(smaller, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec",
                          catalog_name="second")
    check_catalog(tmp_path / "cat", smaller, "second")
    assert no_leftovers(tmp_path)


def test_failed_table_write_keeps_earlier_catalog(tmp_path, monkeypatch):
    table = sky_table()
    hats.write_hats_table(table, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hats, "_write_partition_info", boom)  # fails after the data files exist
    with pytest.raises(OSError, match="disk full"):
        hats.write_hats_table(sky_table(100, seed=3), tmp_path / "cat", order=ORDER, ra_col="ra",
                              dec_col="dec", catalog_name="broken")
    check_catalog(tmp_path / "cat", table, "sky")
    assert no_leftovers(tmp_path)


def test_bad_inputs_refused_before_writing(tmp_path):
    table = sky_table(50)
    kwargs = {"order": ORDER, "ra_col": "ra", "dec_col": "dec", "catalog_name": "x"}
    with pytest.raises(ValueError, match="_healpix_29"):
        hats.write_hats_table(table.drop_columns(["_healpix_29"]), tmp_path / "a", **kwargs)
    with pytest.raises(ValueError, match="int64"):
        hats.write_hats_table(table.set_column(4, "_healpix_29", pa.array(table["_healpix_29"].to_numpy()
                                                                           .astype(np.float64))),
                              tmp_path / "a", **kwargs)
    with pytest.raises(ValueError, match="computed properties: hats_nrows"):
        hats.write_hats_table(table, tmp_path / "a", **kwargs, extra_properties={"hats_nrows": 1})
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a HATS catalog"):
        hats.write_hats_table(table, tmp_path / "precious", **kwargs)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "a").exists() and no_leftovers(tmp_path)


def test_read_of_non_catalog_names_path(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nothing"))):
        hats.read_hats(spark, tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not a HATS catalog"):
        hats.read_properties(tmp_path)


# --- Spark writer --------------------------------------------------------------------------

def test_write_hats_spark_layout_and_round_trip(spark, tmp_path):
    table = sky_table()
    df = spark.createDataFrame(table.to_pandas())
    summary = hats.write_hats(df, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec",
                              catalog_name="sky", extra_properties={"photoz_seed": 1})
    check_catalog(tmp_path / "cat", table, "sky")
    assert summary["n_rows"] == table.num_rows
    assert summary["n_partitions"] == len(data_files(tmp_path / "cat")) > 100

    back = hats.read_hats(spark, tmp_path / "cat")
    assert back.columns == table.column_names  # no Norder / Dir partition columns
    rows = back.select("id", "_healpix_29").toPandas().sort_values("id")
    expected = table.select(["id", "_healpix_29"]).to_pandas().sort_values("id")
    assert rows["id"].tolist() == expected["id"].tolist()
    assert rows["_healpix_29"].tolist() == expected["_healpix_29"].tolist()
    assert no_leftovers(tmp_path)


def test_write_hats_spark_rerun_replaces(spark, tmp_path):
    table = sky_table()
    df = spark.createDataFrame(table.to_pandas())
    hats.write_hats(df, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")
    hats.write_hats(df, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")
    check_catalog(tmp_path / "cat", table, "sky")
    assert hats.read_hats(spark, tmp_path / "cat").count() == table.num_rows
    assert no_leftovers(tmp_path)


def test_failed_spark_write_keeps_earlier_catalog(spark, tmp_path):
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    table = sky_table()
    df = spark.createDataFrame(table.to_pandas())
    hats.write_hats(df, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")

    @F.udf(T.DoubleType())
    def explode_late(mag):
        raise RuntimeError("bad row")

    broken = df.withColumn("mag2", explode_late("mag"))
    with pytest.raises(Exception, match="bad row"):
        hats.write_hats(broken, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="x")
    check_catalog(tmp_path / "cat", table, "sky")
    assert no_leftovers(tmp_path)


def test_empty_dataframe_gives_empty_catalog(spark, tmp_path):
    df = spark.createDataFrame(sky_table(20).to_pandas()).limit(0)
    summary = hats.write_hats(df, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec",
                              catalog_name="empty")
    assert summary["n_rows"] == 0 and summary["n_partitions"] == 0
    back = hats.read_hats(spark, tmp_path / "cat")
    assert back.count() == 0 and back.columns == df.columns


# --- map_hats: pixel to pixel, no shuffle -------------------------------------------------------

def double_mag():
    """The map function; made in a function so Spark pickles it by value (workers lack this module)."""

    def run(batches):  # from_arrays, not append_column: this also runs on the petastorm stack (pyarrow 14)
        for batch in batches:
            yield pa.RecordBatch.from_arrays([*batch.columns, pc.multiply(batch.column("mag"), 2)],
                                             names=[*batch.schema.names, "mag2"])

    return run


MAPPED_SCHEMA = pa.schema([("id", pa.int64()), ("ra", pa.float64()), ("dec", pa.float64()), ("mag", pa.float32()),
                           ("_healpix_29", pa.int64()), ("mag2", pa.float32())])


def polar_cap() -> pa.Table:
    """The sky table north of Dec 60: about 200 rows in a dozen pixels (one Spark task each)."""
    table = sky_table()
    return table.filter(pc.greater(table["dec"], 60.0))


def test_map_hats_maps_each_pixel_into_the_same_pixel(spark, tmp_path):
    table = polar_cap()
    hats.write_hats_table(table.append_column("junk", pa.array(np.zeros(table.num_rows))), tmp_path / "src",
                          order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")
    summary = hats.map_hats(spark, tmp_path / "src", tmp_path / "out", double_mag(),
                            columns=["id", "ra", "dec", "mag", "_healpix_29"], schema=MAPPED_SCHEMA,
                            catalog_name="mapped", batch_size=7, extra_properties={"photoz_seed": 1})
    expected = table.append_column("mag2", pc.multiply(table["mag"], 2))
    check_catalog(tmp_path / "out", expected, "mapped")  # also: only the columns read, rows sorted
    assert summary["n_rows"] == table.num_rows and summary["n_partitions"] == len(data_files(tmp_path / "src"))
    for npix, path in data_files(tmp_path / "out").items():  # each file keeps its source file's row order
        source = pq.read_table(data_files(tmp_path / "src")[npix])
        out = pq.read_table(path)
        assert out["id"].to_pylist() == source["id"].to_pylist()
        assert np.array_equal(out["mag2"].to_numpy(), 2 * source["mag"].to_numpy())
    assert hats.read_properties(tmp_path / "out")["photoz_seed"] == "1"
    assert no_leftovers(tmp_path)


def test_map_hats_refuses_rows_moved_to_another_pixel(spark, tmp_path):
    table = polar_cap()
    hats.write_hats_table(table, tmp_path / "src", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")
    hats.map_hats(spark, tmp_path / "src", tmp_path / "out", double_mag(), columns=table.column_names,
                  schema=MAPPED_SCHEMA, catalog_name="mapped")

    add_mag2 = double_mag()

    def move(batches):  # every row to pixel 0 of the order: two tasks would write one file
        for batch in add_mag2(batches):
            columns = batch.columns
            columns[4] = pa.array(np.zeros(batch.num_rows, dtype=np.int64))
            yield pa.RecordBatch.from_arrays(columns, schema=batch.schema)

    with pytest.raises(Exception, match="must keep _healpix_29"):
        hats.map_hats(spark, tmp_path / "src", tmp_path / "out", move, columns=table.column_names,
                      schema=MAPPED_SCHEMA, catalog_name="moved")
    assert hats.read_properties(tmp_path / "out")["obs_collection"] == "mapped"  # earlier catalog kept
    assert no_leftovers(tmp_path)


def test_map_hats_checks_columns_and_maps_empty_catalogs(spark, tmp_path):
    table = polar_cap()
    hats.write_hats_table(table, tmp_path / "src", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")
    with pytest.raises(ValueError, match="lacks columns flux_u, flux_g"):
        hats.map_hats(spark, tmp_path / "src", tmp_path / "out", double_mag(),
                      columns=["id", "flux_u", "flux_g"], schema=MAPPED_SCHEMA, catalog_name="x")
    assert not (tmp_path / "out").exists()

    hats.write_hats_table(table.slice(0, 0), tmp_path / "empty", order=ORDER, ra_col="ra", dec_col="dec",
                          catalog_name="empty")
    summary = hats.map_hats(spark, tmp_path / "empty", tmp_path / "out", double_mag(),
                            columns=table.column_names, schema=MAPPED_SCHEMA, catalog_name="mapped")
    assert summary["n_rows"] == 0 and summary["n_partitions"] == 0
    assert hats.read_schema(tmp_path / "out") == MAPPED_SCHEMA
    assert hats.read_hats(spark, tmp_path / "out").count() == 0


# --- data-sized writes: task counts, row groups, task reports, the _metadata cap ----------------

def test_write_hats_sizes_tasks_and_row_groups_from_the_data(spark, tmp_path, monkeypatch):
    table = sky_table(20_000)
    # Many small Arrow batches (the session's arrow_batch_size) and 12 input partitions.
    df = spark.createDataFrame(table.to_pandas()).repartition(12)
    cores = spark.sparkContext.defaultParallelism
    assert hats.write_parallelism(df) == max(2 * cores, 12)
    assert hats.write_parallelism(df.coalesce(1)) == 2 * cores
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "10")  # each pixel's ~100 rows reach the writer in ~10 batches
    try:
        summary = hats.write_hats(df, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")
    finally:
        spark.conf.set(key, before)
    files = data_files(tmp_path / "cat")
    # Each file is one row group, not one per batch, as the tasks report.
    assert all(pq.read_metadata(f).num_row_groups == 1 for f in files.values())
    assert summary["n_row_groups"] == len(files) == summary["n_partitions"]
    size = sum(f.stat().st_size for f in files.values())
    assert int(hats.read_properties(tmp_path / "cat")["hats_estsize"]) == size // 1024
    assert (tmp_path / "cat" / "dataset" / "_metadata").is_file()
    # Above the cap: _common_metadata only (readers do not need _metadata).
    monkeypatch.setattr(hats, "METADATA_MAX_ROW_GROUPS", len(files) - 1)
    hats.write_hats(df, tmp_path / "cat", order=ORDER, ra_col="ra", dec_col="dec", catalog_name="sky")
    assert not (tmp_path / "cat" / "dataset" / "_metadata").exists()
    assert (tmp_path / "cat" / "dataset" / "_common_metadata").is_file()
    assert hats.read_hats(spark, tmp_path / "cat").count() == table.num_rows


def test_pixel_file_writer_gathers_row_groups(tmp_path):
    table = sky_table(5000).sort_by("_healpix_29")
    (tmp_path / f"Norder={ORDER}").mkdir()
    writer = hats._PixelFileWriter(tmp_path, ORDER, row_group_rows=100)
    for batch in table.to_batches(max_chunksize=7):
        writer.write(batch)
    counts = writer.close()
    groups = 0
    for npix, rows in counts.items():
        meta = pq.read_metadata(tmp_path / hats.pixel_relpath(ORDER, npix))
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sum(sizes) == rows and all(s >= 100 for s in sizes[:-1]) and max(sizes) < 100 + 7
        groups += len(sizes)
    assert writer.n_row_groups == groups and sum(counts.values()) == table.num_rows
