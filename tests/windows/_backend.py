"""Lets anonshm's Windows modules import before anonshm/__init__.py supports Windows.

``import anonshm`` needs a backend for the platform; until the Windows one is wired in,
a bare package object stands in for it, so that ``anonshm._win32`` and
``anonshm._windows`` (which need only ``_errors`` and ``_wire``) import on their own.
Import this module before them: conftest.py does, and so does every child.
"""

import ctypes
import sys
import types
from pathlib import Path

TYPE_CHECKING = False
assert sys.platform == "win32" or not TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent.parent

try:
    import anonshm  # noqa: F401 - works once the Windows backend is wired in
except (ImportError, AttributeError):  # AttributeError: _map reads mmap.MAP_PRIVATE
    for name in [name for name in sys.modules if name.partition(".")[0] == "anonshm"]:
        del sys.modules[name]  # what the failed import left half-made
    stub = types.ModuleType("anonshm")
    stub.__path__ = [str(ROOT / "anonshm")]
    sys.modules["anonshm"] = stub

# Wine's ntdll exports wine_get_version; Windows' does not.
UNDER_WINE: bool = hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
