"""The training loop and what plugs into it."""
