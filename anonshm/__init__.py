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

TYPE_CHECKING = False
if TYPE_CHECKING:
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

# Loaded on first use, so a child that only maps the memory it inherited never pays for
# them: spawn and its types come with subprocess and typing (~10 ms of import), and
# Protection with enum (~3 ms; inside the package a protection is a plain int).
_LAZY = {
    "PopenOptions": "_spawn",
    "SharedChild": "_spawn",
    "spawn": "_spawn",
    "Protection": "_protection",
}


if not TYPE_CHECKING:  # a checker sees the names imported above, and no fallback

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is not None:
            from importlib import import_module  # noqa: PLC0415 - only on first use

            value = getattr(import_module(f"{__name__}.{module}"), name)
            globals()[name] = value  # found directly from now on
            return value
        raise AttributeError(f"module 'anonshm' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


del TYPE_CHECKING  # only the public names stay public
