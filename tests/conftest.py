"""Shared fixtures and setup for the test suite."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

try:
    import torch

    torch.set_num_threads(1)  # 2-core CI machine; tests use tiny shapes
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def repo_root() -> str:
    return ROOT
