"""Fixtures shared by the unit tests."""

import pytest
import torch


@pytest.fixture
def torch_globals():
    """One intra-op thread (tiny tensors train far faster than with threads fighting over a few cores), and
    the global settings seed_everything changes put back afterwards so other test modules are unaffected."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng_state = torch.random.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.random.set_rng_state(rng_state)
