import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
  if not REFERENCE.is_dir():
    pytest.fail(f"reference fixtures not found at {REFERENCE} (shared/ must sit beside the repo)")
  return REFERENCE
