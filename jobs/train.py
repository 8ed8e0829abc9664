"""Train the LSTM-MDNz model on features/<band_set>, log it to MLflow and register it.

The job is photoz_spark/jobs/train.py (`main`); --help lists its settings.
"""

import sys

from photoz_spark.jobs.train import main

if __name__ == "__main__":
    main(sys.argv[1:])
