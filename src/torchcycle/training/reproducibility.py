"""Seeding and thread settings, so the same params and seed give the same model on one machine."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def configure_threads(num_threads: int | None) -> int:
    """Use every core for intra-op work unless params say otherwise; returns the count in use."""
    n = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n
