"""torchcycle: versioned data to an explained, exported, registered and served PyTorch model."""

import os as _os

# OpenMP threads that spin while waiting collapse when cores are shared with other processes (measured
# 2-thread training steps 10-40x slower under load; see benchmarks/results/training.md). Passive waiting
# costs nothing measurable on an idle machine. Set before torch loads its OpenMP runtime; an explicit
# setting in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
