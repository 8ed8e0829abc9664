"""Ingest a real survey catalog (FITS, CSV, Parquet, or an existing HATS catalog) into catalogs/<name>.

The job is photoz_spark/jobs/ingest_catalog.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.ingest_catalog import main

if __name__ == "__main__":
    main(sys.argv[1:])
