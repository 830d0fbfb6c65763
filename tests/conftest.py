"""Shared fixtures: paths to the examples."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.ein"))


@pytest.fixture
def root() -> Path:
    return ROOT
