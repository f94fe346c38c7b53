"""Shared fixtures: the real files in ../shared/data (see its README); hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The fuzz tests' profile (tests/test_fuzz.py uses "fuzz"; other tests keep their own
# settings): brief and derandomized by default, as CI runs it; GRISTMILL_FUZZ=long (or a
# number of examples) for a long, random run (benches/fuzz.sh).
_FUZZ = os.environ.get("GRISTMILL_FUZZ", "ci")
if _FUZZ not in ("ci", "long") and not _FUZZ.isdigit():
    raise pytest.UsageError(f"GRISTMILL_FUZZ must be ci, long or a number of examples, not {_FUZZ!r}")
settings.register_profile(
    "fuzz",
    max_examples={"ci": 30, "long": 3000}.get(_FUZZ) or int(_FUZZ),
    derandomize=_FUZZ == "ci",
    deadline=None,  # a hang is caught by the tests' watchdog; slow CI machines are not hangs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GRISTMILL_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests need ../shared/data beside the checkout")
    return SHARED_DATA
