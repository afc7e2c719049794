"""Prefect flows and deployments for scheduled retraining."""
