"""Photometric redshifts for every row of a catalog, from a registered model.

The job is photoz_spark/jobs/score_catalog.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.score_catalog import main

if __name__ == "__main__":
    main(sys.argv[1:])
