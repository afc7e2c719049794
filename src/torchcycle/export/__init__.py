"""ONNX export, parity checks and runtime benchmarks; pure functions on models and arrays."""
