"""Fixtures of the library's tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def flush_denormals():
    """Randomly initialised ResNets with frozen BatchNorm produce denormal floats, ~30x slower on a CPU.
    A module that uses it runs with denormals flushed to zero, and the setting is put back after it."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
