"""Shared test helpers: where the test data lives, and how to find ../shared when it exists."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))


def shared_dir() -> Path | None:
    """../shared beside the checkout (CI has it, a user's clone does not); ASA_SHARED overrides."""
    p = Path(os.environ.get("ASA_SHARED", ROOT.parent / "shared"))
    return p if p.is_dir() else None


@pytest.fixture
def shared():
    p = shared_dir()
    if p is None:
        pytest.skip("../shared is absent (real recordings are only in CI and developer checkouts)")
    return p
