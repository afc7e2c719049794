"""Thin DVC stage entry points: read params, load inputs, call the pure code, write outputs."""
