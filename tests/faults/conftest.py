"""The fault suite's fixtures: see fixtures.py (shared with tests/security)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures import daemon_defaults, daemons, peers, pytest_terminal_summary, workdir  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from skipped_run import pytest_sessionfinish  # noqa: E402,F401  (all skipped: exit 77, "skipped" in CTest)
