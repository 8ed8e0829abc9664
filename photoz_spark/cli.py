"""The one command-line convention every job follows.

``spark-submit jobs/NAME.py [--conf FILE.yaml] [--workdir DIR] [--master URL] [key=value ...]``
(also ``python jobs/NAME.py ...``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from photoz_spark.config import ConfigError, load_config, resolve_path

WORKDIR_PARTS = ("catalogs", "matched", "features", "mlflow", "scores", "reports", "truth")


@dataclass(frozen=True)
class Workdir:
    """The work directory and its fixed sub-folders."""

    root: Path

    def __getattr__(self, part: str) -> Path:
        if part in WORKDIR_PARTS:
            return self.root / part
        raise AttributeError(part)

    def catalog(self, name: str) -> Path:
        return self.root / "catalogs" / name


def job_parser(description: str, job_defaults: str | None) -> argparse.ArgumentParser:
    """An argument parser with the shared options; a job may add its own."""
    defaults = f"conf/pipeline.yaml + conf/{job_defaults}" if job_defaults else "conf/pipeline.yaml"
    parser = argparse.ArgumentParser(
        description=description,
        epilog=f"Defaults come from {defaults}; any key can be overridden as key=value "
               "(nested keys with dots, e.g. spark.shuffle_partitions=16).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--conf", metavar="FILE.yaml", help="a YAML file overlaid on the defaults")
    parser.add_argument("--workdir", metavar="DIR", help="where outputs go (default from config: ./workdir)")
    parser.add_argument("--master", metavar="URL", help="Spark master, e.g. local[2] or spark://host:7077")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(job_defaults=job_defaults)
    return parser


def parse_job_args(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse arguments into (args, config, workdir); a bad config exits with one line."""
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.workdir:
        overrides.append(f"workdir={args.workdir}")
    if args.master:
        overrides.append(f"spark.master={args.master}")
    try:
        config = load_config(parser.get_default("job_defaults"), args.conf, overrides)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return args, config, Workdir(resolve_path(config["workdir"]))


def fail(message: str, code: int = 2) -> None:
    """Stop a job with a one-line message (no stack trace) for errors the user can fix."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
