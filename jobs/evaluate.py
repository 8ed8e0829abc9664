"""Evaluate a registered model: Table 1, per-z-bin metrics, recalibration and Figs. 3-6 of the paper.

The job is photoz_spark/jobs/evaluate.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.evaluate import main

if __name__ == "__main__":
    main(sys.argv[1:])
