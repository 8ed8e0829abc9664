"""Export a score output's redshift PDFs as qp files (qp.read / qp.is_qp_file open them; RAIL reads them).

Reads workdir/<export.input> (scores/<name>, written by jobs/score_catalog.py) and writes
workdir/qp/<name>/: one qp Ensemble file per HEALPix pixel (Norder=k/Dir=d/Npix=n.hdf5), or one
file <name>.hdf5 for the whole selection (--single-file), plus export.json (files, rows, source,
model). Each PDF is qp's `mixmod` from the mixmod_weights/means/stds columns, with the id, ra,
dec, _healpix_29, n_observed and flags columns as ancillary data (--columns to choose). The
files hold the PDF that the z_phot_* summaries describe, also for a model recalibrated with
train.recalibration=mixture (the default); only for train.recalibration=pit_map do they hold
the NETWORK's mixture, not the recalibrated PDF (the summary says which). Rows the model could not score
(NOT_SCORED) are kept with NaN parameters (--scored-only leaves them out). Needs the astro extra: pip install -e '.[astro]'.
No Spark: one pixel in memory at a time. A rerun replaces the export; a failed run leaves the
previous one untouched.

Example: python jobs/export_qp.py --input scores/photometric --pixels 1234,1235 --limit 100000
"""

from __future__ import annotations

import sys

from photoz_spark.cli import config_option, job_parser, run_job
from photoz_spark.config import require


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__, "export.yaml")
    config_option(parser, "--input", "export.input", metavar="PATH",
                  help="scores/<name> under the workdir (sets export.input)")
    config_option(parser, "--output", "export.output", metavar="NAME",
                  help="writes workdir/qp/NAME; default the input's name (sets export.output)")
    config_option(parser, "--pixels", "export.pixels", metavar="N,N,...",
                  help="only these HEALPix pixels (Npix at the catalog's order; sets export.pixels)")
    config_option(parser, "--limit", "export.limit", metavar="ROWS",
                  help="at most ROWS rows, the first in pixel order; 0 = all (sets export.limit)")
    config_option(parser, "--columns", "export.columns", metavar="A,B,...",
                  help="ancillary columns (sets export.columns)")
    config_option(parser, "--single-file", "export.single_file", switch=True,
                  help="one file for the whole selection instead of one per pixel")
    config_option(parser, "--scored-only", "export.scored_only", switch=True,
                  help="leave out NOT_SCORED rows (NaN mixture), counted in the summary")
    config_option(parser, "--format", "export.format", metavar="FMT", help="hdf5 (default) or parquet")
    from photoz_spark.export.qp import export_qp

    return run_job(parser, _as_lists(argv), lambda job: plan(job.config["export"], job.workdir),
                   lambda job, _, request: export_qp(**request), print_summary, spark=False)


def _as_lists(argv: list[str] | None) -> list[str]:
    """Let --pixels/--columns take a,b,c as well as [a,b,c] (YAML lists)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--pixels", "--columns") and not argv[i + 1].startswith("["):
            argv[i + 1] = f"[{argv[i + 1]}]"
    return argv


def plan(cfg: dict, workdir) -> dict:
    """``export_qp``'s arguments from the ``export`` config section; bad settings refused here."""
    from pathlib import Path

    from photoz_spark.export.qp import require_format
    from photoz_spark.paths import safe_name

    parts = Path(cfg["input"]).parts
    require(len(parts) == 2 and parts[0] == "scores", f"export.input must be scores/<name>, got {cfg['input']!r}")
    require(int(cfg["limit"]) >= 0, f"export.limit must be >= 0 (0 = every row), got {cfg['limit']}")
    pixels = cfg["pixels"] or []
    require(all(isinstance(p, int) and p >= 0 for p in pixels),
            f"export.pixels must be a list of pixel numbers, got {cfg['pixels']!r}")
    require_format(str(cfg["format"]))
    name = safe_name(cfg["output"] or parts[1], "export.output")
    return {"scores_dir": workdir.root / cfg["input"], "output_dir": workdir.root / "qp" / name,
            "pixels": pixels or None, "columns": [str(c) for c in cfg["columns"]] or None,
            "limit": int(cfg["limit"]) or None, "single_file": bool(cfg["single_file"]), "fmt": str(cfg["format"]),
            "scored_only": bool(cfg["scored_only"]), "root": workdir.root}


def print_summary(s: dict, job=None) -> None:
    files = s["files"]
    print("\n=== export_qp ===")
    print(f"input         {s['input']}")
    print(f"model         {s['model']['uri'] or '(not recorded)'}")
    print(f"selection     {len(s['pixels'])} pixel(s) at order {s['order']}"
          + (f", first {s['limit']:,d} rows" if s["limit"] else ""))
    print(f"output        {s['output']}  {s['rows']:,d} rows in {len(files)} {s['format']} file(s)")
    if s["unscored_dropped"]:
        print(f"left out      {s['unscored_dropped']:,d} NOT_SCORED rows (--scored-only)")
    print(f"ensemble      qp {s['parameterisation']}: {s['ensemble']}")
    print(f"ancillary     {', '.join(s['columns']) or 'none'}")
    print(f"time          {s['seconds']:.1f} s ({s['rows'] / max(s['seconds'], 1e-9):,.0f} rows/s)")
    print(f"open with     qp.read('{s['output']}/{next(iter(files), '')}')")


if __name__ == "__main__":
    main(sys.argv[1:])
