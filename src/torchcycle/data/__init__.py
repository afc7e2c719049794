"""Data sources, validation, preprocessing and splits."""
