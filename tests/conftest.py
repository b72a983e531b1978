"""Shared test setup: the project root on sys.path and the reference fixtures beside the project."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
