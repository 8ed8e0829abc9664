"""Simulate the built-in multi-survey quasar sky as HEALPix-partitioned catalogs.

The job is photoz_spark/jobs/simulate_sky.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.simulate_sky import main

if __name__ == "__main__":
    main(sys.argv[1:])
