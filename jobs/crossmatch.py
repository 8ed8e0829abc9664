"""Crossmatch a left catalog (default dr16q) with right catalogs (default sdss, desi_ls) by position.

The job is photoz_spark/jobs/crossmatch.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.crossmatch import main

if __name__ == "__main__":
    main(sys.argv[1:])
