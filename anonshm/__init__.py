"""anonshm: anonymous shared memory between a parent process and its children.

Memory with no name, reachable only by the processes it was handed to, freed by the
kernel when the last holder exits, and handed over with NSPR's two protocols:
inheritance (:func:`spawn` and :meth:`AnonymousMemory.inherited`) and the exported
string token (:meth:`AnonymousMemory.export` and :meth:`AnonymousMemory.from_token`).
"""

from . import _multiprocessing
from ._errors import AnonShmError, InheritError, TokenError
from ._map import MemoryMap
from ._memory import AnonymousMemory
from ._protection import Protection
from ._spawn import PopenOptions, SharedChild, spawn

__all__ = [
    "AnonShmError",
    "AnonymousMemory",
    "InheritError",
    "MemoryMap",
    "PopenOptions",
    "Protection",
    "SharedChild",
    "TokenError",
    "spawn",
]

__version__ = "0.1.0"

_multiprocessing.install()
