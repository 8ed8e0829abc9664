"""Turn a matched catalog into the LSTM's input sequences, splits and statistics.

The job is photoz_spark/jobs/build_features.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.build_features import main

if __name__ == "__main__":
    main(sys.argv[1:])
