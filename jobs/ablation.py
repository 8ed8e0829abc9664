"""Band-set ablation (Table 2, Fig. 7): one model per band set, identical splits and settings.

The job is photoz_spark/jobs/ablation.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.ablation import main

if __name__ == "__main__":
    main(sys.argv[1:])
