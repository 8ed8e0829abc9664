"""Where does the simulated quasars' colour excess come from? Medians against Richards et al. (2001).

Run: PYTHONPATH=. python bench/sim_colours.py [--n 40000]

Draws noiseless quasars at 0.775 < z < 2.125 with the library (no Spark) and prints, against
Richards et al. (2001) Table 3 (photoz_spark/sim/data/richards2001_table3.txt):

- the mean offset (simulated - R01 median, over their 27 bins from z = 0.80 to 2.10) of u-g,
  g-r, r-i, i-z for conf/simulate.yaml as it is, and with each population ingredient switched
  off in turn, then all of them (the Vanden Berk composite alone);
- R01's g-r per bin next to the simulated one, at the default and with sim.quasars.tilt_mean;
- i - W1 (z = 0.5-2) and nu L_nu at 1-3 um over 5100 A against Assef et al. (2010)'s AGN template
  (photoz_spark/sim/data/assef2010_AGN.fits), at the default and with sim.quasars.tilt_mean.

"bright": i < 19.1 as R01's quasars (realism.REFERENCE_I_MAX) and the colours on the SDSS system
(sim.systematics.zero_point_mag), as tests/test_sim_realism.py compares them; "all": every
magnitude to i = 22, AB.
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

# Each population ingredient and the setting that switches it off.
INGREDIENTS = {
    "host light": {"host_psf_fraction": 0.0},
    "slope scatter": {"tilt_sigma": 0.0},
    "SMC reddening": {"reddened_fraction": 0.0},
    "BALs": {"bal_fraction": 0.0},
    "DLAs": {"dla_fraction": 0.0},
    "line scatter": {"line_scatter_dex": 0.0, "line_group_scatter_dex": 0.0},
    "Baldwin effect": {"baldwin_slope": 0.0},
}


def offsets(sim: dict, grid, n: int, bright: bool, **changes) -> dict:
    """Simulated minus R01 median colour per bin, z 0.80-2.10."""
    from photoz_spark.sim import realism

    q = copy.deepcopy(sim["quasars"])
    q.update(changes, z_nodes=[0.775, 2.125], z_weights=[1.0, 1.0])
    if bright:
        q["i_mag_max"] = realism.REFERENCE_I_MAX
    z, colours = realism.population_colours(q, grid, n)
    zero_points = sim["systematics"]["zero_point_mag"] if bright else None
    return realism.reference_offsets(z, colours, 0.8, 2.1, zero_points)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40000, help="quasars per variant")
    parser.add_argument("--tilt-mean", type=float, default=0.0, help="the slope to compare (0: the composite's own)")
    args = parser.parse_args(argv)

    from photoz_spark.bands import BANDS_FILE, load_bands
    from photoz_spark.config import cache_dir, load_config
    from photoz_spark.sim import realism
    from photoz_spark.sim.photometry import load_or_build_grid

    t0 = time.process_time()
    grid = load_or_build_grid(load_bands(), BANDS_FILE, cache_dir(load_config()))
    sim = load_config("simulate.yaml")["sim"]
    names = realism.REFERENCE_COLOURS
    print("| sky | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))

    def row(label: str, result: dict) -> None:
        print(f"| {label} | " + " | ".join(f"{np.mean(result[c]):+.3f}" for c in names) + " |")

    row("default, all", offsets(sim, grid, args.n, bright=False))
    default = offsets(sim, grid, args.n, bright=True)
    row("default, bright", default)
    for name, change in INGREDIENTS.items():
        row(f"no {name}, bright", offsets(sim, grid, args.n, bright=True, **change))
    everything_off = {k: v for change in INGREDIENTS.values() for k, v in change.items()}
    row("composite alone (all of the above off)", offsets(sim, grid, args.n, bright=True, **everything_off))
    other = offsets(sim, grid, args.n, bright=True, tilt_mean=args.tilt_mean)
    row(f"tilt_mean={args.tilt_mean}, bright", other)

    ref = realism.reference_medians()
    g_r = ref["g-r"][np.isin(np.round(ref["z"], 2), np.round(default["z"], 2))]
    print(f"\n| z | R01 g−r | default | tilt_mean={args.tilt_mean} |\n|---|---|---|---|")
    for z, r, d, b in zip(default["z"], g_r, default["g-r"], other["g-r"]):
        print(f"| {z:.2f} | {r:.3f} | {r + d:.3f} | {r + b:.3f} |")
    near_infrared(sim, grid, args.n, args.tilt_mean, load_bands())
    print(f"\n# {time.process_time() - t0:.1f} CPU s")


def near_infrared(sim: dict, grid, n: int, tilt_mean: float, registry) -> None:
    """i - W1 and the near-IR bump against Assef et al. (2010)'s AGN template, default and another slope."""
    from photoz_spark.sim import realism

    template = realism.agn_template()
    z = np.array([0.5, 1.0, 1.5, 2.0])
    reference = realism.spectrum_colour(template, registry.band("sdss_i").filter,
                                        registry.band("wise_w1").filter, z)
    print(f"\n| z | template i−W1 | default − template | tilt_mean={tilt_mean} − template |\n|---|---|---|---|")
    gaps = []
    for tilt in (sim["quasars"]["tilt_mean"], tilt_mean):
        q = copy.deepcopy(sim["quasars"])
        q.update(z_nodes=[0.4, 2.1], z_weights=[1.0, 1.0], i_mag_max=realism.REFERENCE_I_MAX, tilt_mean=tilt)
        gaps.append(realism.population_median_colour(q, grid, n, "sdss_i", "wise_w1", z) - reference)
    for k, zk in enumerate(z):
        print(f"| {zk:.1f} | {reference[k]:+.3f} | {gaps[0][k]:+.3f} | {gaps[1][k]:+.3f} |")
    print("\n| nu L_nu(lambda) / nu L_nu(5100 A) | 1 um | 1.5 um | 2 um | 2.5 um | 3 um |\n|---|---|---|---|---|---|")
    spectra = {"template": template, "default": realism.mean_nucleus(sim["quasars"]["tilt_mean"]),
               f"tilt_mean={tilt_mean}": realism.mean_nucleus(tilt_mean)}
    for name, spectrum in spectra.items():
        ratios = [realism.nu_f_nu_ratio(spectrum, lam, 5100.0) for lam in (1e4, 1.5e4, 2e4, 2.5e4, 3e4)]
        print(f"| {name} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
