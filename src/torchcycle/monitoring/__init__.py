"""Data monitoring: drift between new batches and the training data."""
