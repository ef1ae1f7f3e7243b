"""Where the repository is, and whether this Windows is Wine."""

import ctypes
import sys
from pathlib import Path

TYPE_CHECKING = False
assert sys.platform == "win32" or not TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent.parent

# Wine's ntdll exports wine_get_version; Windows' does not.
UNDER_WINE: bool = hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
