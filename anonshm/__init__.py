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

TYPE_CHECKING = False
if TYPE_CHECKING:
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

# spawn and its types come with subprocess and typing (~10 ms of import): loaded on
# first use, so a child that only maps the memory it inherited never pays for them.
_LAZY = frozenset({"PopenOptions", "SharedChild", "spawn"})


if not TYPE_CHECKING:  # a checker sees the names imported above, and no fallback

    def __getattr__(name: str) -> object:
        if name in _LAZY:
            from . import _spawn  # noqa: PLC0415 - the point: imported on first use

            return getattr(_spawn, name)
        raise AttributeError(f"module 'anonshm' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


del TYPE_CHECKING  # only the public names stay public
