"""Shared pytest settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same random state, so a flaky pass cannot hide a failure."""
    torch.manual_seed(0)
    yield
