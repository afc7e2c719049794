"""Params-only hyperparameter search."""
