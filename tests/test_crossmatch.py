"""The crossmatch: its math, constructed edge cases with exact answers, and the simulated sky's truth."""

import shutil
import subprocess
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import angular_separation
from scipy.spatial import cKDTree

from photoz_spark import PROJECT_DIR, hats
from photoz_spark.bands import load_bands
from photoz_spark.crossmatch import geometry
from photoz_spark.crossmatch.algorithm import HealpixMatch, KdTreeMatch, Sky
from photoz_spark.flags import Flag
from photoz_spark.jobs import crossmatch as crossmatch_job
from photoz_spark.jobs import simulate_sky

REGISTRY = load_bands()
ORDER = 4          # partition order of the constructed catalogs
JOIN_ORDER = 13    # auto margin order for 1.5 arcsec
ARCSEC = 1 / 3600.0


def astropy_sep_arcsec(ra1, dec1, ra2, dec2):
    """Vincenty's formula (astropy): an independent reference for the separations."""
    return np.degrees(angular_separation(*np.radians([ra1, dec1, ra2, dec2]))) * 3600.0


# --- pure functions --------------------------------------------------------------------------

def test_separation_matches_astropy_from_microarcsec_to_antipodes():
    rng = np.random.default_rng(3)
    ra1, dec1 = rng.uniform(0, 360, 2000), np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
    scale = 10.0 ** rng.uniform(-6, 5.8, 2000)  # arcsec
    angle = rng.uniform(0, 2 * np.pi, 2000)
    dec2 = np.clip(dec1 + scale * ARCSEC * np.sin(angle), -90, 90)
    ra2 = (ra1 + scale * ARCSEC * np.cos(angle)) % 360
    expected = astropy_sep_arcsec(ra1, dec1, ra2, dec2)
    got = geometry.separation_arcsec(ra1, dec1, ra2, dec2)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-7)
    assert geometry.separation_arcsec(10.0, 89.99985, 190.0, 89.99985) == pytest.approx(1.08, abs=1e-9)
    assert geometry.separation_arcsec(0, 0, 180, 0) == pytest.approx(648000.0)
    assert np.isnan(geometry.separation_arcsec(np.nan, 0, 0, 0))


def test_valid_coords():
    ra = np.array([0.0, 359.999, 360.0, -1e-9, np.nan, 10.0, 10.0, 10.0])
    dec = np.array([0.0, 90.0, 0.0, 0.0, 0.0, -90.0, 90.0001, np.nan])
    assert geometry.valid_coords(ra, dec).tolist() == [True, True, False, False, False, True, False, False]


def test_auto_join_order_is_the_finest_with_pixels_ten_radii_wide():
    assert geometry.auto_join_order(1.5) == JOIN_ORDER
    for radius in (0.01, 0.3, 1.5, 3.0, 60.0, 3600.0):
        order = geometry.auto_join_order(radius)
        assert geometry.pixel_size_arcsec(order) >= 10 * radius > geometry.pixel_size_arcsec(order + 1)
    assert geometry.auto_join_order(1e-9) == 29
    assert geometry.auto_join_order(21000.0) == 0
    with pytest.raises(ValueError, match="too large"):
        geometry.auto_join_order(3 * 3600.0 * 3)


def _displace(ra, dec, arcsec, angle):
    """Unit vectors of points moved ``arcsec`` along great circles in direction ``angle``."""
    v = geometry.unit_vectors(ra, dec)
    east = np.stack([-np.sin(np.radians(ra)), np.cos(np.radians(ra)), np.zeros(len(ra))], 1)
    north = np.cross(v, east)
    step = np.radians(arcsec * ARCSEC)[:, None]
    w = v * np.cos(step) + (np.cos(angle)[:, None] * east + np.sin(angle)[:, None] * north) * np.sin(step)
    return w / np.linalg.norm(w, axis=1)[:, None]


@pytest.mark.parametrize("radius", [1.5, 90.0, 3600.0, 15000.0])
@pytest.mark.parametrize("shuffled", [False, True])
def test_healpix_cells_agree_with_the_tree_row_for_row(radius, shuffled):
    """HealpixMatch (sorted cells + 8 neighbours) finds exactly the k-d tree's matches, ranks and
    candidate counts: left rows on the cells' corners (3- and 4-cell vertices), at both poles and
    across RA 0, right rows 0-1.3 radii away in any direction, some at one position (ties to the
    lower id), right rows sorted by _healpix_29 or not."""
    rng = np.random.default_rng(int(radius))
    algorithms = [cls(radius, 3) for cls in (HealpixMatch, KdTreeMatch)]
    for algorithm in algorithms:
        algorithm.validate()
    order = algorithms[0].cell_order
    assert geometry.pixel_size_arcsec(order) >= geometry.CELL_SIZE_PER_RADIUS * radius
    corners = hp.boundaries(2**order, rng.integers(0, 12 * 4**order, 60), step=1, nest=True)
    places = np.concatenate([np.transpose(corners, (0, 2, 1)).reshape(-1, 3),
                             geometry.unit_vectors(rng.uniform(0, 360, 20), np.r_[np.full(10, 90.0), np.full(10, -90.0)]),
                             geometry.unit_vectors(np.r_[np.zeros(10), np.full(10, 359.9999)], rng.uniform(-80, 80, 20))])
    n = len(places)
    lra, ldec = hp.vec2ang(_displace(*hp.vec2ang(places, lonlat=True), rng.uniform(0, 0.3 * radius, n),
                                     rng.uniform(0, 2 * np.pi, n)), lonlat=True)
    src = np.repeat(np.arange(n), rng.integers(0, 5, n))
    rra, rdec = hp.vec2ang(_displace(lra[src], ldec[src], rng.uniform(0, 1.3 * radius, len(src)),
                                     rng.uniform(0, 2 * np.pi, len(src))), lonlat=True)
    rra, rdec = np.r_[rra, rra[:20]] % 360, np.r_[rdec, rdec[:20]]  # 20 positions twice: ties
    h29 = hats.healpix29(rra, rdec)
    rows = rng.permutation(len(rra)) if shuffled else np.argsort(h29, kind="stable")
    right = Sky(rra[rows], rdec[rows], h29[rows])
    id_order = rng.permutation(len(rra))
    left = Sky(lra % 360, ldec, hats.healpix29(lra % 360, ldec))
    found = [a.match(left, right, id_order, a.prepare(right)) for a in algorithms]
    for field in ("left", "right", "sep_arcsec", "rank", "n_candidates"):
        np.testing.assert_array_equal(getattr(found[0], field), getattr(found[1], field), err_msg=field)
    tree = cKDTree(right.xyz())
    counts = [len(c) for c in tree.query_ball_point(left.xyz(), _chord(radius) * (1 + 1e-9))]
    np.testing.assert_array_equal(found[0].n_candidates, counts)
    assert (found[0].rank > 1).sum() >= 20 and (found[0].n_candidates > 3).sum() >= 5  # not vacuous
    # Not vacuous: many matches cross a cell border, some at the poles.
    lc, rc = geometry.cells_of(left.h29, order), geometry.cells_of(right.h29, order)
    assert (lc[found[0].left] != rc[found[0].right]).sum() >= 50


@pytest.mark.parametrize("left_order, margin_order", [(4, 10), (2, 13), (6, 6), (8, 5), (3, 20)])
@pytest.mark.parametrize("dec_range", [(-90, 90), (89.0, 90.0), (-90.0, -89.0), (41.0, 42.5)])
def test_search_region_holds_every_counterpart_near_the_pixel(left_order, margin_order, dec_range):
    """Counterparts up to half a margin pixel away (5x the largest radius of that margin order) are
    inside the region of the left row's pixel: at pixel edges and corners, at the poles, across RA 0
    and at 41.8 deg (the 8 vertices where a pixel has 7 neighbours)."""
    rng = np.random.default_rng(5)
    n = 1000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(*np.sin(np.radians(dec_range)), n)))
    # Half the rows sit just inside a corner of their pixel (the worst case for a margin).
    half = n // 2
    pixels = hp.ang2pix(2**left_order, ra[:half], dec[:half], nest=True, lonlat=True)
    corners = hp.boundaries(2**left_order, pixels, step=1, nest=True)  # (half, 3, 4)
    corner = corners[np.arange(half), :, rng.integers(0, 4, half)]
    centre = np.array(hp.pix2vec(2**left_order, pixels, nest=True)).T
    inside = corner + 1e-7 * (centre - corner)
    ra[:half], dec[:half] = hp.vec2ang(inside / np.linalg.norm(inside, axis=1)[:, None], lonlat=True)
    reach = geometry.pixel_size_arcsec(min(margin_order, left_order + geometry.MAX_MARGIN_DEPTH))
    w = _displace(ra, dec, 0.5 * reach * rng.uniform(0, 1, n), rng.uniform(0, 2 * np.pi, n))
    right_h29 = hats.healpix29(*hp.vec2ang(w, lonlat=True))
    left_pix = hats.pixel_at_order(hats.healpix29(ra, dec), left_order)
    assert (left_pix != hats.pixel_at_order(right_h29, left_order)).mean() > 0.3  # many cross a border
    for npix in np.unique(left_pix):
        rows = np.flatnonzero(left_pix == npix)
        lo, hi = geometry.search_region(int(npix), left_order, margin_order)
        assert geometry.in_region(right_h29[rows], lo, hi).all(), (npix, ra[rows], dec[rows])


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5, 6, 13, 29])
def test_neighbours_are_healpys(order):
    """Neighbours by bit arithmetic inside a base pixel and HEALPix's face tables across its edges
    are healpy's, in healpy's order, -1 included: every pixel up to order 6, base-pixel edges, the
    4 corners of every base pixel and random pixels at fine ones."""
    rng = np.random.default_rng(order)
    side = 2**order
    if order <= 6:
        pixels = np.arange(12 * 4**order)
    else:
        t = rng.integers(0, side, 50)
        ends = np.array([0, side - 1, 0, side - 1]), np.array([0, 0, side - 1, side - 1])
        edge = np.r_[t * 0, t * 0 + side - 1, t, t], np.r_[t, t, t * 0, t * 0 + side - 1]
        local = geometry._interleave(*(np.asarray(a, dtype=np.int64) for a in edge))
        corners = (np.arange(12)[:, None] << 2 * order) + geometry._interleave(*ends)[None, :]
        pixels = np.r_[(rng.integers(0, 12, len(local)) << 2 * order) + local, corners.ravel(),
                       rng.integers(0, 12 * 4**order, 500)]
    np.testing.assert_array_equal(geometry.neighbours(pixels, order),
                                  hp.get_all_neighbours(side, pixels, nest=True))


def test_workers_never_import_healpy():
    """The tasks' geometry (search regions and neighbours, edges of base pixels included) runs
    without healpy, whose import (matplotlib, astropy) costs each Spark worker ~1.4 CPU s."""
    code = ("import sys, numpy as np\n"
            "from photoz_spark.crossmatch import geometry, run\n"
            "geometry.search_region(0, 3, 13)\n"
            "geometry.neighbours(np.arange(12 * 4**2), 2)\n"
            "assert 'healpy' not in sys.modules, 'healpy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_DIR)


def test_search_region_is_the_pixel_and_a_thin_ring():
    lo, hi = geometry.search_region(5, 2, 8)
    assert np.all(lo[1:] > hi[:-1])  # sorted and disjoint
    assert any(a <= 5 << 54 and 6 << 54 <= b for a, b in zip(lo, hi, strict=True))
    area = (hi - lo).sum() / 4**27  # in order-2 pixels
    assert 1.0 < area < 1.1  # the pixel plus a ring one order-8 pixel wide (~4 x 64 of 4096)
    # Pixels of catalogs at other orders that overlap it: coarser and finer.
    assert geometry.pixels_in_region(np.arange(48), 1, lo, hi).tolist() == sorted(
        {5 >> 2, *(int(p) >> 2 for p in hp.get_all_neighbours(4, 5, nest=True) if p >= 0)})
    finer = geometry.pixels_in_region(np.arange(12 * 4**3), 3, lo, hi)
    assert set(range(20, 24)) <= set(finer.tolist()) and len(finer) <= 4 + 4 * 2 + 4
    # sorted_region_rows is in_region for sorted indices.
    h29 = np.sort(np.random.default_rng(2).integers(0, 12 * 4**29, 100_000))
    np.testing.assert_array_equal(geometry.sorted_region_rows(h29, lo, hi),
                                  np.flatnonzero(geometry.in_region(h29, lo, hi)))
    # A margin order coarser than the pixel: the enclosing pixel and its neighbours.
    lo, hi = geometry.search_region(5 << 8, 6, 2)
    assert geometry.pixels_in_region(np.arange(192), 2, lo, hi).tolist() == sorted(
        [5, *(p for p in hp.get_all_neighbours(4, 5, nest=True).tolist() if p >= 0)])


# --- constructed edge cases ------------------------------------------------------------------

def _step(ra, dec, east_arcsec=0.0, north_arcsec=0.0):
    return ra + east_arcsec * ARCSEC / np.cos(np.radians(dec)), dec + north_arcsec * ARCSEC


def _straddle(ra, dec, order, same_parent: bool, sep_arcsec: float):
    """A left and a right position sep_arcsec apart on either side of an order-``order`` border,
    inside one order-ORDER pixel (same_parent) or across two of them."""
    a = int(hp.ang2pix(2**order, ra, dec, nest=True, lonlat=True))
    for b in hp.get_all_neighbours(2**order, a, nest=True)[::2]:  # the 4 edge neighbours
        if ((a >> 2 * (order - ORDER)) == (b >> 2 * (order - ORDER))) == same_parent:
            break
    va, vb = (np.array(hp.pix2vec(2**order, p, nest=True)) for p in (a, b))
    lo, hi = 0.0, 1.0  # bisect the centre-to-centre arc for the border
    for _ in range(60):
        mid = (lo + hi) / 2
        w = va * (1 - mid) + vb * mid
        lo, hi = (mid, hi) if hp.vec2pix(2**order, *w, nest=True) == a else (lo, mid)
    border = va * (1 - lo) + vb * lo
    direction = (vb - va) - np.dot(vb - va, border) * border / np.dot(border, border)
    direction /= np.linalg.norm(direction)
    border /= np.linalg.norm(border)
    half = np.radians(sep_arcsec * ARCSEC / 2)
    left, right = (border * np.cos(half) + s * direction * np.sin(half) for s in (-1, 1))
    (lra, ldec), (rra, rdec) = (hp.vec2ang(v, lonlat=True) for v in (left, right))
    return (float(lra[0]), float(ldec[0])), (float(rra[0]), float(rdec[0])), (a, int(b))


def _edge_cases():
    """Left rows (name, THING_ID, ra, dec) and right rows (objID, ra, dec), with what must match."""
    left, right, expect = [], [], {}

    def pair(name, thing_id, lpos, rpos, obj_id):
        left.append((name, thing_id, *lpos))
        right.append((obj_id, *rpos))
        expect[name] = (obj_id, astropy_sep_arcsec(*lpos, *rpos), 1)

    lpos, rpos, (a, b) = _straddle(150.0, 30.0, JOIN_ORDER, True, 0.8)
    assert a != b and a >> 18 == b >> 18
    pair("border_join_order", 1, lpos, rpos, 101)
    lpos, rpos, (a, b) = _straddle(150.0, 30.0, ORDER + 1, False, 1.2)
    assert hats.pixel_at_order(hats.healpix29(*lpos), ORDER) != hats.pixel_at_order(hats.healpix29(*rpos), ORDER)
    pair("border_partition", 2, lpos, rpos, 102)
    # At dec 60, RA 0 is a base-pixel border; opposite sides of a pole are in different base pixels.
    for name, thing_id, lpos, rpos in (("ra_wrap", 3, (360.0 - 0.8 * ARCSEC, 60.0), (0.8 * ARCSEC, 60.0)),
                                       ("north_pole", 4, (10.0, 89.99985), (190.0, 89.99985)),
                                       ("south_pole", 5, (100.0, -89.99985), (280.0, -89.99985))):
        assert hats.pixel_at_order(hats.healpix29(*lpos), ORDER) != hats.pixel_at_order(hats.healpix29(*rpos), ORDER)
        pair(name, thing_id, lpos, rpos, 100 + thing_id)
    pair("dup_a", 6, (151.0, 31.0), _step(151.0, 31.0, 0.3), 106)
    pair("dup_b", 6, (151.1, 31.0), _step(151.1, 31.0, -0.4), 107)
    pair("inside", 7, (152.0, 30.0), _step(152.0, 30.0, north_arcsec=1.4999), 108)
    # Ambiguous: the nearer of two candidates; tied candidates: the lower id.
    left.append(("ambiguous", 8, 152.5, 30.0))
    right += [(109, *_step(152.5, 30.0, north_arcsec=1.0)), (110, *_step(152.5, 30.0, east_arcsec=-0.5))]
    expect["ambiguous"] = (110, astropy_sep_arcsec(152.5, 30.0, *right[-1][1:]), 2)
    left.append(("tie", 9, 153.0, 0.0))
    right += [(112, 153.0, 0.6 * ARCSEC), (111, 153.0, -0.6 * ARCSEC)]
    expect["tie"] = (111, astropy_sep_arcsec(153.0, 0.0, 153.0, -0.6 * ARCSEC), 2)
    # Unmatched: just outside the radius, an empty region, bad coordinates next to a right source.
    left.append(("outside", 10, 152.0, 31.0))
    right.append((113, *_step(152.0, 31.0, north_arcsec=1.5001)))
    left += [("empty_region", 11, 200.0, -45.0), ("nan_ra", 12, np.nan, 30.0), ("dec_95", 13, 150.0, 95.0)]
    expect.update(dict.fromkeys(["outside", "empty_region", "nan_ra", "dec_95"], (None, None, 0)))
    return left, right, expect


def _write_edge_catalogs(workdir):
    left, right, expect = _edge_cases()
    names, thing_id, ra, dec = (list(c) for c in zip(*left, strict=True))
    # A bad row keeps a valid _healpix_29 (HATS needs one): that of a position with a right source.
    h29 = hats.healpix29(np.where(np.isfinite(ra) & (np.abs(dec) <= 90), ra, 152.0),
                         np.where(np.isfinite(ra) & (np.abs(dec) <= 90), dec, 31.0))
    hats.write_hats_table(pa.table({"NAME": names, "THING_ID": np.array(thing_id, dtype=np.int64), "RA": ra,
                                    "DEC": dec, "Z": np.arange(len(names), dtype=np.float64),
                                    "_healpix_29": h29}),
                          workdir / "catalogs" / "dr16q", order=ORDER, ra_col="RA", dec_col="DEC",
                          catalog_name="dr16q")
    obj_id, rra, rdec = (np.array(c) for c in zip(*right, strict=True))
    _write_right(workdir, "sdss", obj_id, rra, rdec)
    _write_right(workdir, "desi_ls", np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))  # empty catalog
    return expect


def _write_right(workdir, name, ids, ra_deg, dec_deg, drop=(), order=ORDER, **override):
    spec = REGISTRY.catalogs[name]
    cols = {spec.id: ids.astype(np.int64), spec.ra: ra_deg, spec.dec: dec_deg}
    for i, band in enumerate(REGISTRY.catalog_bands(name)):  # fluxes that tell which row they came from
        cols[band.flux] = (ids + 0.1 * i).astype(np.float32)
        cols[band.err] = np.full(len(ids), 1.0 + i, dtype=np.float32)
    cols["_healpix_29"] = hats.healpix29(ra_deg, dec_deg)
    cols.update(override)
    table = pa.table({k: v for k, v in cols.items() if k not in drop})
    hats.write_hats_table(table, workdir / "catalogs" / name, order=order, ra_col=spec.ra, dec_col=spec.dec,
                          catalog_name=name)


@pytest.fixture(scope="module")
def edge(spark, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("edge")
    expect = _write_edge_catalogs(workdir)
    summary = crossmatch_job.main(["--workdir", str(workdir)])
    out = hats.read_hats(spark, workdir / "matched" / "dr16q").toPandas().set_index("NAME")
    return workdir, expect, summary, out


def test_edge_cases_exact_ids_and_separations(edge):
    _, expect, summary, out = edge
    assert summary["rows_in"] == summary["rows_out"] == len(out) == len(expect)
    for name, (obj_id, sep, n) in expect.items():
        row = out.loc[name]
        assert row["sdss_n_candidates"] == n, name
        if obj_id is None:
            assert np.isnan(row["sdss_id"]) and np.isnan(row["sdss_sep_arcsec"]) and np.isnan(row["psfFlux_u"]), name
        else:
            assert row["sdss_id"] == obj_id, name
            assert row["sdss_sep_arcsec"] == pytest.approx(sep, abs=1e-6), name
            assert row["psfFlux_u"] == pytest.approx(obj_id) and row["psfFluxIvar_z"] == 5.0, name
    assert out["desi_ls_n_candidates"].eq(0).all() and out["desi_ls_id"].isna().all()


def test_edge_cases_flags_and_schema(edge):
    workdir, _, summary, out = edge
    flags = out["flags"].astype(int).to_dict()
    assert all(f & Flag.NO_MATCH for f in flags.values())  # the desi_ls catalog is empty
    assert {n for n in out.index if flags[n] & Flag.BAD_COORDS} == {"nan_ra", "dec_95"}
    assert {n for n in out.index if flags[n] & Flag.DUPLICATE_ID} == {"dup_a", "dup_b"}
    assert {n for n in out.index if flags[n] & Flag.AMBIGUOUS_MATCH} == {"ambiguous", "tie"}
    assert summary["flags"]["BAD_COORDS"] == 2 and summary["flags"]["NO_MATCH"] == len(out)
    assert summary["per_catalog"]["sdss"] == {"matched": 10, "unmatched": 4, "ambiguous": 2,
                                              "match_rate": pytest.approx(10 / 14)}
    sdss_bands = [c for b in REGISTRY.catalog_bands("sdss") for c in (b.flux, b.err)]
    desi_bands = [c for b in REGISTRY.catalog_bands("desi_ls") for c in (b.flux, b.err)]
    columns = hats.read_schema(workdir / "matched" / "dr16q").names
    assert columns == ["NAME", "THING_ID", "RA", "DEC", "Z", "_healpix_29",
                       "sdss_id", "sdss_sep_arcsec", "sdss_n_candidates", *sdss_bands,
                       "desi_ls_id", "desi_ls_sep_arcsec", "desi_ls_n_candidates", *desi_bands, "flags"]
    schema = hats.read_schema(workdir / "matched" / "dr16q")
    assert [str(schema.field(c).type) for c in ("sdss_id", "sdss_sep_arcsec", "sdss_n_candidates", "flags")] == \
        ["int64", "double", "int32", "int32"]
    props = hats.read_properties(workdir / "matched" / "dr16q")
    assert props["hats_order"] == str(ORDER) and props["photoz_crossmatch_join_order"] == str(JOIN_ORDER)
    assert props["photoz_crossmatch_right"] == "sdss desi_ls" and props["photoz_crossmatch_radius_arcsec"] == "1.5"


def test_k2_gives_one_row_per_rank_and_rerun_replaces(spark, edge, tmp_path):
    edge_workdir, expect, summary, _ = edge
    workdir = tmp_path / "workdir"
    shutil.copytree(edge_workdir, workdir)  # with the k=1 output, which this run must replace
    # desi_ls now has one source: beside the ambiguous row, so its rank 2 row has desi_ls nulls.
    _write_right(workdir, "desi_ls", np.array([900]), *(np.array([c]) for c in _step(152.5, 30.0, 0.2)))
    k2 = crossmatch_job.main(["--workdir", str(workdir), "crossmatch.k=2"])
    out = hats.read_hats(spark, workdir / "matched" / "dr16q").toPandas()
    assert k2["rows_in"] == len(expect) and k2["rows_out"] == len(out) == len(expect) + 2
    assert hats.read_properties(workdir / "matched" / "dr16q")["photoz_crossmatch_k"] == "2"
    assert not list(workdir.glob(".crossmatch-staging-*")) and not list((workdir / "matched").glob(".*"))
    amb = out[out.NAME == "ambiguous"].sort_values("sdss_rank")
    assert amb.sdss_id.tolist() == [110, 109] and amb.sdss_rank.tolist() == [1, 2]
    np.testing.assert_allclose(amb.sdss_sep_arcsec, [expect["ambiguous"][1], 1.0], atol=1e-6)
    assert amb.sdss_n_candidates.tolist() == [2, 2] and amb.desi_ls_n_candidates.tolist() == [1, 1]
    assert amb.desi_ls_id.tolist()[0] == 900 and np.isnan(amb.desi_ls_id.tolist()[1])
    assert amb.desi_ls_rank.tolist()[0] == 1 and np.isnan(amb.desi_ls_rank.tolist()[1])
    assert (amb["flags"].to_numpy() & int(Flag.NO_MATCH)).tolist() == [0, 0]
    assert out[out.NAME == "tie"].sort_values("sdss_rank").sdss_id.tolist() == [111, 112]
    assert out[out.NAME == "outside"].sdss_rank.isna().all()
    assert k2["per_catalog"]["sdss"] == summary["per_catalog"]["sdss"]
    assert k2["per_catalog"]["desi_ls"]["matched"] == 1 and k2["flags"]["NO_MATCH"] == len(expect) - 1


# --- the simulated sky -----------------------------------------------------------------------

SKY = ["sim.footprint.radius_deg=0.3", "sim.quasars.density_deg2=600", "sim.field.galaxy_density_deg2=8000",
       "sim.field.star_density_deg2=1000", "sim.figure=false"]


@pytest.fixture(scope="module")
def sky(spark, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sky")
    simulate_sky.main(["--workdir", str(workdir), *SKY])
    summary = crossmatch_job.main(["--workdir", str(workdir)])
    return workdir, summary


def _chord(arcsec):
    return 2 * np.sin(np.radians(arcsec * ARCSEC) / 2)


def _read(spark, path, columns):
    pdf = hats.read_hats(spark, path).select(*columns).toPandas()
    return {c: pdf[c].to_numpy() for c in columns}


def test_matches_agree_with_brute_force_and_truth(spark, sky):
    workdir, summary = sky
    out = _read(spark, workdir / "matched" / "dr16q",
                ["THING_ID", "RA", "DEC", "flags", "sdss_id", "sdss_n_candidates", "desi_ls_id", "desi_ls_n_candidates"])
    truth = _read(spark, workdir / "truth" / "sky", ["THING_ID", "sdss_objID", "LS_ID"])
    n = len(out["THING_ID"])
    assert summary["rows_in"] == summary["rows_out"] == n > 300
    assert sorted(out["THING_ID"]) == sorted(truth["THING_ID"])
    truth_row = {t: i for i, t in enumerate(truth["THING_ID"])}
    order = np.array([truth_row[t] for t in out["THING_ID"]])
    left_xyz = geometry.unit_vectors(out["RA"], out["DEC"])
    confused = np.zeros(n, dtype=bool)
    for name, truth_id in (("sdss", "sdss_objID"), ("desi_ls", "LS_ID")):
        spec = REGISTRY.catalogs[name]
        right = _read(spark, workdir / "catalogs" / name, [spec.id, spec.ra, spec.dec])
        tree = cKDTree(geometry.unit_vectors(right[spec.ra], right[spec.dec]))
        # Brute force (a k-d tree): candidates within 1.5" and the nearest one, for every row.
        counts = np.array([len(c) for c in tree.query_ball_point(left_xyz, _chord(1.5))])
        np.testing.assert_array_equal(out[f"{name}_n_candidates"], counts)
        _, nearest = tree.query(left_xyz)
        matched = out[f"{name}_n_candidates"] > 0
        np.testing.assert_array_equal(out[f"{name}_id"][matched], right[spec.id][nearest[matched]])
        # Against the truth, for quasars whose counterpart has no other source within 3".
        true_id = truth[truth_id][order]
        sorter = np.argsort(right[spec.id])
        true_xyz = tree.data[sorter[np.searchsorted(right[spec.id], true_id, sorter=sorter)]]
        isolated = np.array([len(c) for c in tree.query_ball_point(true_xyz, _chord(3.0))]) == 1
        correct = out[f"{name}_id"] == true_id
        completeness = correct[isolated].mean()
        purity = correct[isolated & matched].sum() / (isolated & matched).sum()
        assert completeness >= 0.999 and purity >= 0.999, (name, completeness, purity)
        confused |= counts > 1
        assert summary["per_catalog"][name]["ambiguous"] == (counts > 1).sum()
    # Confusion: another source within the radius; the seed gives a few, and all are flagged.
    assert confused.sum() >= 1
    np.testing.assert_array_equal((out["flags"] & Flag.AMBIGUOUS_MATCH) > 0, confused)


# --- refused settings and catalogs -----------------------------------------------------------

def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        crossmatch_job.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("override, message", [
    ("crossmatch.left=gaia", "crossmatch.left: unknown catalog 'gaia'; allowed: dr16q, sdss, desi_ls, lsst"),
    ("crossmatch.right=[sdss,gaia]", "unknown catalog(s) ['gaia']; allowed: dr16q, sdss, desi_ls, lsst"),
    ("crossmatch.right=[]", "crossmatch.right must list at least one catalog"),
    ("crossmatch.right=[dr16q]", "must not include the left catalog"),
    ("crossmatch.radius_arcsec=0", "crossmatch.radius_arcsec must be > 0"),
    ("crossmatch.radius_arcsec=-1.5", "crossmatch.radius_arcsec must be > 0"),
    ("crossmatch.radius_arcsec=100000", "too large for a pixel join"),
    ("crossmatch.k=0", "crossmatch.k must be >= 1"),
    ("crossmatch.k=1.5", "expected int"),
    ("crossmatch.join_order=14", "join_order=14 is too fine"),
    ("crossmatch.join_order=fine", "crossmatch.join_order must be auto or a HEALPix order"),
    ("crossmatch.output_order=30", "crossmatch.output_order must be empty"),
    ("crossmatch.run=../x", "crossmatch.run must be a folder name"),
])
def test_bad_settings_refused_with_one_line(tmp_path, capsys, override, message):
    assert message in _refused(["--workdir", str(tmp_path), override], capsys)
    assert not (tmp_path / "matched").exists()


def _catalogs(workdir, left_extra=None, **sdss):
    ra, dec = np.array([150.0, 150.001]), np.array([30.0, 30.0])
    columns = {"THING_ID": np.array([1, 2]), "RA": ra, "DEC": dec, **(left_extra or {}),
               "_healpix_29": hats.healpix29(ra, dec)}
    hats.write_hats_table(pa.table(columns), workdir / "catalogs" / "dr16q", order=ORDER, ra_col="RA",
                          dec_col="DEC", catalog_name="dr16q")
    _write_right(workdir, "sdss", np.array([5, 6]), ra, dec, **sdss)


def test_missing_catalog_named_with_its_path(tmp_path, capsys):
    _catalogs(tmp_path)
    err = _refused(["--workdir", str(tmp_path)], capsys)
    assert "catalog 'desi_ls'" in err and str(tmp_path / "catalogs" / "desi_ls") in err


@pytest.mark.parametrize("left_extra, sdss, message", [
    (None, {"drop": ["psfFluxIvar_g"]}, "catalog 'sdss' ("),
    (None, {"drop": ["psfFluxIvar_g"]}, "has no column 'psfFluxIvar_g'"),
    (None, {"ra": np.array(["150", "150.001"])}, "column 'ra' must be floating point (degrees), got string"),
    (None, {"psfFlux_r": np.array(["a", "b"])}, "column 'psfFlux_r' must be numeric"),
    ({"THING_ID": np.array([1.0, 2.0])}, {}, "column 'THING_ID' must be an integer or string id"),
    ({"sdss_id": np.array([1, 2])}, {}, "output column 'sdss_id' from right catalog 'sdss' would collide"),
    ({"psfFlux_u": np.array([1, 2])}, {}, "output column 'psfFlux_u' from right catalog 'sdss' would collide"),
    (None, {"_xm_row": np.array([1, 2])}, "the prefix '_xm_' is reserved"),
])
def test_bad_catalogs_refused_before_any_work(tmp_path, capsys, left_extra, sdss, message):
    _catalogs(tmp_path, left_extra, **sdss)
    assert message in _refused(["--workdir", str(tmp_path), "crossmatch.right=[sdss]"], capsys)
    assert not (tmp_path / "matched").exists()


# --- mixed partition orders, pixel corners, poles, RA wrap -------------------------------------

def _hard_places(rng, orders):
    """Sky positions where margins matter: pixel corners at each order, both poles, RA 0/360."""
    places = []
    for order in orders:
        pixels = rng.integers(0, 12 * 4**order, 40)
        corners = hp.boundaries(2**order, pixels, step=1, nest=True)  # (40, 3, 4)
        places.append(np.transpose(corners, (0, 2, 1)).reshape(-1, 3))
    places.append(geometry.unit_vectors(rng.uniform(0, 360, 20), np.r_[np.full(10, 89.9998), np.full(10, -89.9998)]))
    places.append(geometry.unit_vectors(np.r_[np.zeros(10), np.full(10, 359.99999)], rng.uniform(-80, 80, 20)))
    return np.concatenate(places)


@pytest.mark.parametrize("left_order, right_order", [(2, 5), (5, 2)])
def test_mixed_orders_corners_poles_and_ra_wrap_agree_with_a_tree_row_for_row(spark, tmp_path, left_order,
                                                                                right_order):
    """Left and right catalogs partitioned at different orders (each way round), with sources on
    pixel corners of both orders, at the poles and across RA 0: the same counterparts and
    candidate counts as a k-d tree over the whole right catalog, for every left row."""
    rng = np.random.default_rng(11)
    places = _hard_places(rng, (left_order, right_order))
    n = len(places)
    left_xyz = _displace(*hp.vec2ang(places, lonlat=True), rng.uniform(0, 0.8, n), rng.uniform(0, 2 * np.pi, n))
    lra, ldec = hp.vec2ang(left_xyz, lonlat=True)
    lra = lra % 360
    # 0-3 right sources per left row, 0-2.5" away (some outside the radius), on any side of a border.
    per = rng.integers(0, 4, n)
    src = np.repeat(np.arange(n), per)
    right_xyz = _displace(lra[src], ldec[src], rng.uniform(0, 2.5, len(src)), rng.uniform(0, 2 * np.pi, len(src)))
    rra, rdec = hp.vec2ang(right_xyz, lonlat=True)
    rra = rra % 360
    columns = {"THING_ID": np.arange(n, dtype=np.int64), "RA": lra, "DEC": ldec,
               "_healpix_29": hats.healpix29(lra, ldec)}
    hats.write_hats_table(pa.table(columns), tmp_path / "catalogs" / "dr16q", order=left_order, ra_col="RA",
                          dec_col="DEC", catalog_name="dr16q")
    ids = rng.permutation(len(src)).astype(np.int64) + 1000
    _write_right(tmp_path, "sdss", ids, rra, rdec, order=right_order)
    summary = crossmatch_job.main(["--workdir", str(tmp_path), "crossmatch.right=[sdss]"])
    out = _read(spark, tmp_path / "matched" / "dr16q", ["THING_ID", "sdss_id", "sdss_n_candidates", "sdss_sep_arcsec"])
    assert summary["rows_in"] == summary["rows_out"] == n and sorted(out["THING_ID"]) == list(range(n))

    tree = cKDTree(geometry.unit_vectors(rra, rdec))
    lxyz = geometry.unit_vectors(lra, ldec)[out["THING_ID"]]
    candidates = tree.query_ball_point(lxyz, _chord(1.5))
    counts = np.array([len(c) for c in candidates])
    np.testing.assert_array_equal(out["sdss_n_candidates"], counts)
    _, nearest = tree.query(lxyz)
    matched = counts > 0
    np.testing.assert_array_equal(out["sdss_id"][matched], ids[nearest[matched]])
    np.testing.assert_allclose(out["sdss_sep_arcsec"][matched],
                               astropy_sep_arcsec(lra[out["THING_ID"]][matched], ldec[out["THING_ID"]][matched],
                                                  rra[nearest[matched]], rdec[nearest[matched]]), atol=1e-6)
    assert np.isnan(out["sdss_sep_arcsec"][~matched].astype(float)).all()
    # Not vacuous: many matches cross a pixel border of each order, some at the poles and RA 0.
    pairs = [(i, j) for i, c in zip(out["THING_ID"], candidates, strict=True) for j in c]
    li, rj = np.array(pairs).T
    lh, rh = hats.healpix29(lra[li], ldec[li]), hats.healpix29(rra[rj], rdec[rj])
    for order in (left_order, right_order):
        assert (hats.pixel_at_order(lh, order) != hats.pixel_at_order(rh, order)).sum() >= 10
    assert (np.abs(ldec[li]) > 89.99).sum() >= 5 and (np.abs(lra[li] - rra[rj]) > 180).sum() >= 1


def test_catalog_without_partition_order_refused(tmp_path, capsys):
    _catalogs(tmp_path)
    props = tmp_path / "catalogs" / "sdss" / "properties"
    props.write_text("\n".join(line for line in props.read_text().splitlines() if not line.startswith("hats_order=")))
    err = _refused(["--workdir", str(tmp_path), "crossmatch.right=[sdss]"], capsys)
    assert "catalog 'sdss'" in err and "has no hats_order" in err
    assert not (tmp_path / "matched").exists()


# --- catalogs under any name, extinction columns (#19 item 0, #20) --------------------------------

def test_extinction_columns_come_with_their_right_catalog(spark, sky):
    workdir, _ = sky
    wanted = ["EBV", "MW_TRANSMISSION_G", "MW_TRANSMISSION_W4", "extinction_u", "extinction_z"]
    out = hats.read_hats(spark, workdir / "matched" / "dr16q").select(
        "THING_ID", "sdss_id", "desi_ls_id", *wanted).toPandas()
    desi = hats.read_hats(spark, workdir / "catalogs" / "desi_ls").select("LS_ID", "EBV", "MW_TRANSMISSION_G",
                                                                            "MW_TRANSMISSION_W4").toPandas()
    sdss = hats.read_hats(spark, workdir / "catalogs" / "sdss").select("objID", "extinction_u",
                                                                         "extinction_z").toPandas()
    desi_rows = out.dropna(subset=["desi_ls_id"]).merge(desi, left_on="desi_ls_id", right_on="LS_ID",
                                                        suffixes=("", "_cat"))
    sdss_rows = out.dropna(subset=["sdss_id"]).merge(sdss, left_on="sdss_id", right_on="objID", suffixes=("", "_cat"))
    assert len(desi_rows) == out.desi_ls_id.notna().sum() > 300 and len(sdss_rows) == out.sdss_id.notna().sum() > 300
    for rows, columns in ((desi_rows, wanted[:3]), (sdss_rows, wanted[3:])):
        for column in columns:  # each matched row carries its counterpart's own value
            np.testing.assert_array_equal(rows[column].to_numpy(), rows[f"{column}_cat"].to_numpy())
    assert (desi_rows.EBV > 0).all() and (desi_rows.MW_TRANSMISSION_G < 1).all()
    assert out[out.desi_ls_id.isna()].EBV.isna().all()  # unmatched: null, as its bands
    props = hats.read_properties(workdir / "matched" / "dr16q")
    assert props["photoz_catalog"] == "dr16q" and props["photoz_bands"].split()[:3] == ["galex_fuv", "galex_nuv",
                                                                                       "sdss_u"]


def test_catalogs_under_any_name_match_by_what_they_record(spark, tmp_path):
    ra, dec = np.array([150.0, 150.01, 150.02]), np.array([30.0, 30.0, 30.0])
    hats.write_hats_table(pa.table({"id": np.array([7, 8, 9]), "ra": ra, "dec": dec, "z": [1.0, 2.0, 3.0],
                                    "_healpix_29": hats.healpix29(ra, dec)}),
                          tmp_path / "catalogs" / "my_specz", order=ORDER, ra_col="ra", dec_col="dec",
                          catalog_name="my_specz", extra_properties={"photoz_catalog": "specz", "photoz_bands": "none"})
    _write_right(tmp_path, "sdss", np.array([5, 6]), ra[:2] + 0.2 * ARCSEC, dec[:2])
    (tmp_path / "catalogs" / "sdss").rename(tmp_path / "catalogs" / "field2")  # obs_collection says sdss: rename it
    props = tmp_path / "catalogs" / "field2" / "properties"
    props.write_text(props.read_text().replace("obs_collection=sdss", "obs_collection=field2")
                     + "photoz_catalog=sdss\nphotoz_bands=sdss_g sdss_r\n")
    summary = crossmatch_job.main(["--workdir", str(tmp_path), "crossmatch.run=mine", "crossmatch.left=my_specz",
                                   "crossmatch.right=[field2]"])
    assert summary["rows_in"] == summary["rows_out"] == 3 and summary["per_catalog"]["field2"]["matched"] == 2
    out = pq.read_table(tmp_path / "matched" / "mine" / "dataset", partitioning=None).sort_by("id")
    assert out.column_names == ["id", "ra", "dec", "z", "_healpix_29", "field2_id", "field2_sep_arcsec",
                                "field2_n_candidates", "psfFlux_g", "psfFluxIvar_g", "psfFlux_r", "psfFluxIvar_r",
                                "flags"]  # only the bands the catalog records
    assert out["field2_id"].to_pylist() == [5, 6, None]
    assert out["psfFlux_r"].to_pylist()[:2] == pytest.approx([5.2, 6.2])  # row 2 of the writer's bands: r
    matched = hats.read_properties(tmp_path / "matched" / "mine")
    assert matched["photoz_catalog"] == "specz" and matched["photoz_bands"] == "sdss_g sdss_r"


def test_duplicate_ids_on_the_driver_and_with_spark_agree(spark, tmp_path, monkeypatch):
    """Small catalogs are counted on the driver (pyarrow), big ones by a Spark aggregation: the
    same duplicated ids either way (integer and string ids; nulls are never duplicates)."""
    from photoz_spark.crossmatch import run as xm_run

    rng = np.random.default_rng(5)
    n = 3000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    ints = rng.integers(0, 2500, n)  # ~500 ids occur more than once, in any pixel
    for ids in (pa.array(ints, type=pa.int64()), pa.array([f"id{i}" if i % 97 else None for i in ints])):
        folder = tmp_path / str(ids.type)
        hats.write_hats_table(pa.table({"THING_ID": ids, "RA": ra, "DEC": dec, "_healpix_29": hats.healpix29(ra, dec)}),
                              folder, order=2, ra_col="RA", dec_col="DEC", catalog_name="dr16q")
        catalog = xm_run.InputCatalog(name="dr16q", path=folder, id="THING_ID", ra="RA", dec="DEC", band_columns=(),
                                      schema=hats.read_schema(folder), properties=hats.read_properties(folder))
        values, counts = np.unique([v for v in ids.to_pylist() if v is not None], return_counts=True)
        expected = sorted(values[counts > 1].tolist())
        assert len(expected) > 100
        assert xm_run.duplicate_ids(spark, catalog) == expected
        monkeypatch.setattr(xm_run, "DRIVER_ID_ROWS", 10)
        assert xm_run.duplicate_ids(spark, catalog) == expected
        monkeypatch.undo()


# --- the margin cache --------------------------------------------------------------------------

def _right_rows(workdir, block, block_order, cache):
    """The right rows a task of ``block`` keeps (run._read_right), with the cache or whole files."""
    from photoz_spark.crossmatch import run as xm_run
    from photoz_spark.crossmatch.algorithm import HealpixMatch
    from photoz_spark.crossmatch.catalogs import open_catalog

    catalog = open_catalog("sdss", workdir / "catalogs" / "sdss", REGISTRY, with_bands=True)
    side = xm_run.RightSide(catalog, *hats.partition_pixels(catalog.path), margins=cache)
    algorithm = HealpixMatch(1.5, 1)
    algorithm.validate()
    lo, hi = geometry.search_region(block, block_order, algorithm.join_order)
    return xm_run._read_right(side, lo, hi, algorithm, (block, block_order))


@pytest.mark.parametrize("block_order", [1, 3, 5])
def test_margin_cache_holds_every_right_row_near_a_block(tmp_path, block_order):
    """Blocks coarser than, equal to and finer than the right catalog's order (3), at pixel
    corners of orders 1-5, both poles and RA 0: the rows kept from the cache (whole files of the
    pixels overlapping the block, border rows of the others) include every right row within the
    radius of the block's left positions, as the whole files do; far fewer rows are decoded."""
    from photoz_spark.crossmatch import margins

    rng = np.random.default_rng(block_order)
    places = _hard_places(rng, (1, 3, 5))
    lra, ldec = hp.vec2ang(places, lonlat=True)
    src = np.repeat(np.arange(len(places)), 3)
    rxyz = _displace(lra[src], ldec[src], rng.uniform(0, 2.0, len(src)), rng.uniform(0, 2 * np.pi, len(src)))
    bra, bdec = rng.uniform(0, 360, 20_000), np.degrees(np.arcsin(rng.uniform(-1, 1, 20_000)))  # background
    rra, rdec = np.r_[hp.vec2ang(rxyz, lonlat=True)[0] % 360, bra], np.r_[hp.vec2ang(rxyz, lonlat=True)[1], bdec]
    _write_right(tmp_path, "sdss", np.arange(len(rra)), rra, rdec, order=3)
    path = tmp_path / "catalogs" / "sdss"
    cache, built = margins.ensure(None, path, geometry.auto_join_order(1.5))
    assert built["rows"] > 0 and margins.is_current(path, geometry.auto_join_order(1.5))
    lh = hats.healpix29(lra % 360, ldec)
    near = cKDTree(geometry.unit_vectors(rra, rdec))
    decoded = {True: 0, False: 0}
    for block in np.unique(hats.pixel_at_order(lh, block_order))[:25].tolist():
        inside = hats.pixel_at_order(lh, block_order) == block
        wanted = sorted({j for c in near.query_ball_point(geometry.unit_vectors(lra[inside], ldec[inside]),
                                                          _chord(1.5)) for j in c})
        kept = {}
        for use_cache in (True, False):
            rows = _right_rows(tmp_path, block, block_order, cache if use_cache else None)
            kept[use_cache] = set(rows.columns["objID"].to_pylist())
            decoded[use_cache] += rows.decoded
        assert set(wanted) <= kept[True] <= kept[False], block
    assert len(wanted) > 0 and decoded[True] < decoded[False] / 2, decoded


def test_stale_margin_cache_is_rebuilt(tmp_path):
    """A right data file changed in place (its size or time differs from the manifest) makes the
    cache stale: ``ensure`` rebuilds it and the new border rows are the new file's."""
    from photoz_spark.crossmatch import margins

    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 5000), np.degrees(np.arcsin(rng.uniform(-1, 1, 5000)))
    _write_right(tmp_path, "sdss", np.arange(5000), ra, dec, order=2)
    path, order = tmp_path / "catalogs" / "sdss", 4
    cache, built = margins.ensure(None, path, order)
    assert built is not None and margins.ensure(None, path, order) == (cache, None)  # current: reused
    npix = int(hats.partition_pixels(path)[1][0])
    data = path / "dataset" / hats.pixel_relpath(2, npix)
    table = pq.read_table(data)
    pq.write_table(table.slice(0, table.num_rows // 2), data)  # rows removed in place
    assert not margins.is_current(path, order)
    cache, built = margins.ensure(None, path, order)
    assert built is not None and margins.is_current(path, order)
    border = pq.read_table(cache / hats.pixel_relpath(2, npix))
    kept = table.slice(0, table.num_rows // 2)
    expected = margins.border_rows(kept.column("_healpix_29").to_numpy(), npix, 2, order)
    assert border.num_rows == expected.sum() > 0
    assert border.column("objID").to_pylist() == kept.column("objID").filter(pa.array(expected)).to_pylist()
    # A cache finer than the catalog is impossible (border pixels need the margin order >= the catalog's).
    assert margins.ensure(None, path, 1) == (None, None)


def test_margin_cache_built_on_spark_equals_the_in_process_one(spark, tmp_path):
    """The Spark build (one mapInArrow task per group of pixels) writes the same border files and
    counts the same rows as the in-process build."""
    from photoz_spark.crossmatch import margins

    rng = np.random.default_rng(5)
    ra, dec = rng.uniform(0, 360, 5000), np.degrees(np.arcsin(rng.uniform(-1, 1, 5000)))
    _write_right(tmp_path, "sdss", np.arange(5000), ra, dec, order=2)
    path = tmp_path / "catalogs" / "sdss"
    local = margins.build(None, path, 4, tmp_path / "local")
    on_spark = margins.build(spark, path, 4, tmp_path / "spark")
    assert on_spark["rows"] == local["rows"] > 0 and on_spark["pixels"] == local["pixels"]
    files = sorted(p.relative_to(local["path"]) for p in Path(local["path"]).rglob("*.parquet"))
    assert files == sorted(p.relative_to(on_spark["path"]) for p in Path(on_spark["path"]).rglob("*.parquet"))
    for f in files:
        assert pq.read_table(Path(on_spark["path"]) / f).equals(pq.read_table(Path(local["path"]) / f))


def test_a_linked_catalog_gets_its_margin_cache_in_the_workdir(tmp_path):
    """A right catalog that lives outside the work directory (``catalogs/<name>`` a link to it, as
    ``ingest.hats_input=link`` makes) is never written into: its cache goes to
    ``<workdir>/margins/<name>``; a catalog of the work directory keeps its cache inside."""
    from photoz_spark.crossmatch import margins

    rng = np.random.default_rng(5)
    ra, dec = rng.uniform(0, 360, 3000), np.degrees(np.arcsin(rng.uniform(-1, 1, 3000)))
    outside, workdir = tmp_path / "users_data", tmp_path / "wd"
    _write_right(outside, "sdss", np.arange(3000), ra, dec, order=2)
    (workdir / "catalogs").mkdir(parents=True)
    (workdir / "catalogs" / "sdss").symlink_to(outside / "catalogs" / "sdss")
    linked = workdir / "catalogs" / "sdss"
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))

    home = margins.cache_home(linked, "sdss", workdir)
    assert home == workdir.resolve() / "margins" / "sdss"
    cache, built = margins.ensure(None, linked, 4, home)
    assert built["rows"] > 0 and cache == home / "order=4" and (cache / margins.MANIFEST).is_file()
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before  # nothing written there
    assert margins.ensure(None, linked, 4, home) == (cache, None)  # current: reused

    _write_right(workdir, "desi_ls", np.arange(3000), ra, dec, order=2)
    assert margins.cache_home(workdir / "catalogs" / "desi_ls", "desi_ls", workdir) is None  # inside
