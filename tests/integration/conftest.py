"""The integration tests' helpers live in tests/conftest.py (shared with tests/dashboard and tests/team);
the names below stay importable from here for modules that have not moved yet."""

from __future__ import annotations

from tests.conftest import (  # noqa: F401  (re-exported)
    BIN,
    REPO,
    Project,
    copy_project,
    free_port,
    project_env,
    shrink,
)
