"""Windows-only tests: collected only by CPython for Windows (scripts/wine-test runs them)."""

import sys

if sys.platform != "win32":
    collect_ignore_glob = ["*.py"]
else:
    from tests.windows._helpers import section  # noqa: F401 - a fixture
