"""Deep-ensemble members in parallel vs one after another, side by side (issue #15 item 5).

Trains the same M-member ensemble on the same features through both paths of
``train.ensemble_parallel`` (train/ensemble.py): sequential (``train_member`` per member, each a
TorchDistributor launch of all N ranks under DDP) and parallel (``train_parallel``: one launch,
N/M ranks per member). The two alternate, ``--repeats`` times each, so a loaded machine's drift
hits both alike. Prints per run: wall seconds, CPU seconds of the ranks (the driver's waited-for
children, ``RUSAGE_CHILDREN``: torchrun and its ranks in local mode) and of the driver itself.

    python bench/ensemble_parallel.py WORKDIR/features/sdss_wise9 --members 2 --ranks 2 \
        --settings '{"max_epochs": 3, "batch_size": 64}'
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> tuple[float, float]:
    """(children's CPU s, this process's CPU s) so far: user + system."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime, time.process_time()


def one_run(spark, features_dir: Path, cfg: dict, mcfg: dict, parallel: bool) -> dict:
    """Train the ensemble's members once in a fresh folder; the wall and CPU seconds it took."""
    from photoz_spark.train import ensemble
    from photoz_spark.train.run import session_gpu_plan

    out = Path(tempfile.mkdtemp(prefix="ens-bench-"))
    try:
        wall, (kids, own) = time.perf_counter(), cpu_seconds()
        if parallel:
            results = ensemble.train_parallel(spark, features_dir, out, cfg, mcfg, session_gpu_plan(spark, cfg))
        else:
            results = [ensemble.train_member(spark, features_dir, out, cfg, mcfg, i) for i in range(cfg["ensemble"])]
        kids2, own2 = cpu_seconds()
        return {"mode": "parallel" if parallel else "sequential", "wall_s": time.perf_counter() - wall,
                "ranks_cpu_s": kids2 - kids, "driver_cpu_s": own2 - own,
                "best_val_loss": [round(r["best_val_loss"], 4) for r in results]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features_dir", type=Path)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", default="{}", help="JSON train settings over conf/train.yaml's")
    args = parser.parse_args()

    from photoz_spark.config import load_config, resolve_recipe
    from photoz_spark.spark import get_spark
    from photoz_spark.train.feeding import ArrowFeed
    from photoz_spark.train.run import model_config

    config = load_config(overrides=[f"spark.master=local[{args.ranks}]"])
    spark = get_spark(config, extra_conf={"spark.ui.enabled": False})
    train_cfg = load_config("train.yaml")
    cfg = resolve_recipe({**train_cfg["train"], **json.loads(args.settings)})
    feed = ArrowFeed(args.features_dir)
    cfg.update(ensemble=args.members, num_processes=args.ranks, use_gpu=False, train_rows=feed.count("train"))
    mcfg = model_config(train_cfg["model"], feed.layout)
    rows = []
    for _ in range(args.repeats):
        for parallel in (False, True):
            rows.append(one_run(spark, args.features_dir, cfg, mcfg, parallel))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| mode | wall s | ranks CPU s | driver CPU s | members' best val NLL |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['wall_s']:.1f} | {r['ranks_cpu_s']:.1f} | {r['driver_cpu_s']:.1f} | "
              f"{r['best_val_loss']} |")
    spark.stop()


if __name__ == "__main__":
    main()
