"""The live stack of the end-to-end tests (API, scheduler and gateway processes, real robots)."""

from tests.e2e.conftest import api, pytest_runtest_makereport, stack

__all__ = ["api", "pytest_runtest_makereport", "stack"]
