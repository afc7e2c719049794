"""Errors a person can act on: each says what was wrong, where, and how to fix it."""


class TorchcycleError(Exception):
    """Base class for user-facing errors; the CLI prints the message without a traceback."""


class ConfigError(TorchcycleError):
    """params.yaml is malformed or names an unknown key/value."""


class DataValidationError(TorchcycleError):
    """A data source failed validation; the message names the file, row/column or image."""


class TrainingError(TorchcycleError):
    """Training could not produce a usable model (e.g. the loss diverged)."""


class PredictionInputError(TorchcycleError):
    """Input handed to a model at prediction time does not match what the model expects."""
