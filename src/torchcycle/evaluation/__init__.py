"""Model evaluation: metrics, plot data tables and figures, all pure (no file or tracking I/O)."""
