"""Export a score output's redshift PDFs as qp files (qp.read / qp.is_qp_file open them; RAIL reads them).

The job is photoz_spark/jobs/export_qp.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.export_qp import main

if __name__ == "__main__":
    main(sys.argv[1:])
