"""How hard is the simulated sky? A fast tree baseline per band set, next to the paper's Table 2.

Run: PYTHONPATH=. python bench/sim_difficulty.py [--pixels 4] [--density 8000] [--skies first,default]
         [--variant 'deep_wise:sim.depth_5sigma.wise_w1=21.3,sim.depth_5sigma.wise_w2=20.9' ...]

Simulates a few sky pixels with the library (no Spark), joins each DR16Q quasar to its SDSS
and DESI rows through the truth table (a perfect crossmatch), and fits a
HistGradientBoostingRegressor on asinh magnitudes and adjacent colours of each band set
(70 % train / 30 % test by THING_ID, ZWARNING = 0, 0 <= Z <= 5, as the features job selects).
Prints σ_NMAD and f_out (|Δz|/(1+z) > 0.15, photoz_spark.metrics) on the test part for

- ``first``: the first demo sky (host fixed; no variability, no North/South systems, no depth
  or zero-point variation, no bad errors or wrong redshifts, no BALs/DLAs/line-group scatter,
  no Galactic dust, the heavier z > 3.5 tail);
- ``default``: conf/simulate.yaml as it is,
- each ``--variant NAME:key=value,...``: the default with those overrides (one ingredient changed),

side by side with the paper's numbers (LSTM-MDNz on real DR16Q, test split; only the two the
README quotes). The tree baseline is not the paper's network: compare the *spread* between band
sets and the shift from one sky to the other, not the absolute level.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER = {"all14": (0.037, 0.034), "optical8": (0.068, 0.206)}   # (σ_NMAD, f_out), LSTM-MDNz Table 2
FIRST_TAIL = [0.0, 0.15, 0.35, 0.6, 0.9, 1.0, 0.9, 0.5, 0.2, 0.08, 0.03, 0.01, 0.0]


def first_sky(sim: dict) -> dict:
    """The settings with every issue-#20 effect switched off (the host fix stays)."""
    sim = copy.deepcopy(sim)
    q = sim["quasars"]
    q.update(wrong_z_fraction=0.0, line_group_scatter_dex=0.0, bal_fraction=0.0, dla_fraction=0.0,
             z_weights=FIRST_TAIL)
    sim["variability"]["enabled"] = False
    sim["galactic_extinction"]["enabled"] = False
    sim["systematics"] = {"desi_north": False}
    return sim


def simulate(sim: dict, pixels: list[int]):
    """DR16Q quasars joined to their SDSS and DESI rows (pandas), via the truth ids."""
    import pandas as pd
    import pyarrow as pa

    from photoz_spark.bands import BANDS_FILE, load_bands
    from photoz_spark.config import cache_dir, load_config
    from photoz_spark.sim.photometry import load_or_build_grid
    from photoz_spark.sim.sky import SkyModel, simulate_pixel

    registry = load_bands()
    grid = load_or_build_grid(registry, BANDS_FILE, cache_dir(load_config()))
    model = SkyModel(sim, registry, grid)
    parts = [simulate_pixel(model, p) for p in pixels]
    tables = {k: pa.concat_tables([p[k] for p in parts]).to_pandas() for k in ("truth", "dr16q", "sdss", "desi_ls")}
    joined = (tables["truth"][["THING_ID", "sdss_objID", "LS_ID", "z_true"]]
              .merge(tables["dr16q"], on="THING_ID")
              .merge(tables["sdss"], left_on="sdss_objID", right_on="objID")
              .merge(tables["desi_ls"], on="LS_ID", suffixes=("", "_desi")))
    return pd.DataFrame(joined), registry


def features(df, registry, band_set: str) -> np.ndarray:
    """asinh magnitudes (softening at each band's median error) and adjacent colours; NaN if no GALEX."""
    mags = []
    for band in registry.band_set(band_set).bands:
        flux = df[band.flux].to_numpy(float)
        err = df[band.err].to_numpy(float)
        sigma = 1.0 / np.sqrt(err) if band.err_kind == "ivar" else err
        sigma = np.where(np.isfinite(sigma), sigma, np.nan)
        soft = np.nanmedian(sigma[err > 0]) if np.any(err > 0) else 1.0
        mag = -2.5 / np.log(10) * np.arcsinh(flux / (2 * soft))
        mags.append(np.where(err > 0, mag, np.nan))
    mags = np.column_stack(mags)
    return np.column_stack([mags, np.diff(mags, axis=1)])


def baseline(df, registry, band_set: str) -> tuple[float, float, int]:
    """σ_NMAD, f_out and test size of a gradient-boosted tree on one band set."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from photoz_spark import metrics

    ok = (df.ZWARNING.to_numpy() == 0) & (df.Z.to_numpy() >= 0) & (df.Z.to_numpy() <= 5)
    x, z = features(df, registry, band_set)[ok], df.Z.to_numpy()[ok]
    test = (df.THING_ID.to_numpy()[ok] * 2654435761 % 1000) < 300
    model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.1, random_state=0)
    model.fit(x[~test], z[~test])
    z_phot = model.predict(x[test])
    return metrics.sigma_nmad(z_phot, z[test]), metrics.outlier_rate(z_phot, z[test]), int(test.sum())


def main() -> None:
    from photoz_spark.config import load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", type=int, default=4, help="order-6 pixels to simulate (0.84 deg² each)")
    parser.add_argument("--density", type=float, default=8000.0, help="quasars per deg² (sim.quasars.density_deg2)")
    parser.add_argument("--skies", default="first,default")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...",
                        help="a sky = the default with these config overrides (added to --skies)")
    args = parser.parse_args()
    density = f"sim.quasars.density_deg2={args.density}"
    base = load_config("simulate.yaml", overrides=[density])["sim"]
    pixels = list(range(20000, 20000 + args.pixels))
    skies = {"first": first_sky(base), "default": base}
    names = args.skies.split(",")
    for variant in args.variant:
        name, _, overrides = variant.partition(":")
        if not name or not overrides or name in skies:
            parser.error(f"--variant {variant!r}: give NEW_NAME:key=value,... (a name other than {', '.join(skies)})")
        skies[name] = load_config("simulate.yaml", overrides=[density, *overrides.split(",")])["sim"]
        names.append(name)
    band_sets = ["all14", "optical_wise12", "optical_galex10", "sdss_wise9", "desi_wise7", "optical8"]
    results = {}
    for name in names:
        t0 = time.time()
        df, registry = simulate(skies[name], pixels)
        results[name] = {b: baseline(df, registry, b) for b in band_sets}
        print(f"# sky {name}: {len(df)} quasars, {time.time() - t0:.0f} s", flush=True)
    header = "| band set | " + " | ".join(f"{s} σ_NMAD | {s} f_out" for s in results) + " | paper σ_NMAD | paper f_out |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for b in band_sets:
        cells = [f"{results[s][b][0]:.3f} | {100 * results[s][b][1]:.1f} %" for s in results]
        paper = PAPER.get(b)
        ref = f"{paper[0]:.3f} | {100 * paper[1]:.1f} %" if paper else "– | –"
        print(f"| {b} | " + " | ".join(cells) + f" | {ref} |")
    for s in results:
        spread = results[s]["optical8"][1] / max(results[s]["all14"][1], 1e-9)
        print(f"# {s}: f_out(optical8) / f_out(all14) = {spread:.1f} (paper {PAPER['optical8'][1] / PAPER['all14'][1]:.1f}); "
              f"test objects {results[s]['all14'][2]}")


if __name__ == "__main__":
    main()
