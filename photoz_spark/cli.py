"""The one command-line convention and the one skeleton every job follows.

``spark-submit jobs/NAME.py [--conf FILE.yaml] [--workdir DIR] [--master URL] [key=value ...]``
(also ``python jobs/NAME.py ...``). Each ``jobs/NAME.py`` runs ``photoz_spark.jobs.NAME.main``,
which is ``run_job``: settings -> validate (before Spark starts) -> run -> summary; a
``UserError`` at any step ends the job with its one-line message.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from photoz_spark.commit import recover
from photoz_spark.config import ConfigError, load_config, resolve_path
from photoz_spark.errors import UserError
from photoz_spark.paths import check_setting_names

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
    parser.set_defaults(job_defaults=job_defaults, config_options={})
    return parser


def config_option(parser: argparse.ArgumentParser, flag: str, key: str, help: str,
                  metavar: str | None = None, switch: bool = False) -> None:
    """Add a job option that is shorthand for the override ``key=value``.

    Args:
        parser: a parser from ``job_parser``.
        flag: the option, e.g. "--band-set".
        key: the dotted config key it sets, e.g. "features.band_set".
        help: the option's help text.
        metavar: the value's name in the help (options with a value).
        switch: a flag without a value that sets ``key=true``.
    """
    if switch:
        action = parser.add_argument(flag, action="store_const", const=True, default=None, help=help)
    else:
        action = parser.add_argument(flag, metavar=metavar, default=None, help=help)
    parser.get_default("config_options")[action.dest] = key


def parse_job_args(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse arguments into (args, config, workdir); a bad config exits with one line."""
    args = parser.parse_intermixed_args(argv)  # key=value before and after options alike
    overrides = list(args.overrides)
    if args.workdir:
        overrides.append(f"workdir={args.workdir}")
    if args.master:
        overrides.append(f"spark.master={args.master}")
    for dest, key in parser.get_default("config_options").items():
        value = getattr(args, dest)
        if value is not None:  # options given on the command line win over key=value
            overrides.append(f"{key}={'true' if value is True else value}")
    try:
        config = load_config(parser.get_default("job_defaults"), args.conf, overrides)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return args, config, Workdir(resolve_path(config["workdir"]))


def start_spark(config: dict, extra_conf: dict | None = None):
    """The job's SparkSession (``spark.get_spark``); a bad ``spark`` setting or a cluster that
    cannot run the job stops it with one line that names the setting to change."""
    from photoz_spark.cluster import ClusterError
    from photoz_spark.spark import get_spark

    try:
        return get_spark(config, extra_conf)
    except (ConfigError, ClusterError) as err:  # both are UserErrors
        fail(str(err))


@dataclass(frozen=True)
class Job:
    """What a job's steps get: its parsed arguments, configuration, bands and work directory."""

    args: argparse.Namespace
    config: dict
    bands: object       # bands.BandCatalog of config bands_file
    workdir: Workdir


def run_job(parser: argparse.ArgumentParser, argv: list[str] | None, validate, run, summary,
            spark: bool = True) -> dict:
    """The stage skeleton: settings -> validate -> run -> summary.

    Args:
        parser: from ``job_parser`` (plus the job's own options).
        argv: the command line (None: sys.argv).
        validate: ``validate(job) -> plan``: every check that needs no Spark; a ValueError here
            is a bad setting or input, reported like a UserError. Before it, every setting that
            names an output (``paths.NAME_KEYS``) is checked to be a safe folder name.
        run: ``run(job, spark, plan) -> summary dict`` (``spark`` None for a job without Spark).
        summary: ``summary(result, job)`` prints the job's summary.
        spark: whether the job needs a SparkSession (started after validate).

    Before anything, ``commit.recover`` repairs what a killed job left in the work directory (an
    interrupted commit is finished or rolled back; dead staging folders are removed).

    Returns:
        The summary dict.
    """
    from photoz_spark.bands import load_bands

    args, config, workdir = parse_job_args(parser, argv)
    for line in recover(workdir.root):  # a killed job's half commit or staging folders, first
        print(f"recovered: {line}", flush=True)
    try:
        check_setting_names(config)  # no name setting may lead an output out of the workdir
        job = Job(args, config, load_bands(resolve_path(config["bands_file"])), workdir)
        plan = validate(job)
    except (UserError, ValueError) as err:
        fail(str(err))
    session = start_spark(config) if spark else None
    try:
        result = run(job, session, plan)
    except UserError as err:
        fail(str(err))
    summary(result, job)
    return result


def fail(message: str, code: int = 2) -> None:
    """Stop a job with a one-line message (no stack trace) for errors the user can fix."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
