"""Training of the LSTM-MDNz model: the plain-torch loop (runs without Spark) and its feeding."""
