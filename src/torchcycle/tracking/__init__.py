"""MLflow: run hand-off between stages."""
