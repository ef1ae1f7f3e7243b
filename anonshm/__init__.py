"""anonshm: anonymous shared memory between a parent process and its children.

Memory with no name, reachable only by the processes it was handed to, freed by the
kernel when the last holder exits, and handed over with NSPR's two protocols:
inheritance (:func:`spawn` and :meth:`AnonymousMemory.inherited`) and the exported
string token (:meth:`AnonymousMemory.export` and :meth:`AnonymousMemory.from_token`).
"""

import sys

from ._errors import AnonShmError, ChannelError, InheritError, TokenError
from ._hints import TRIGGERS as _HINT_TRIGGERS
from ._map import MemoryMap
from ._memory import AnonymousMemory, ForChild

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from ._channel import ChannelReader, ChannelWriter, channel
    from ._protection import Protection
    from ._spawn import PopenOptions, SharedChild, spawn

__all__ = [
    "AnonShmError",
    "AnonymousMemory",
    "ChannelError",
    "ChannelReader",
    "ChannelWriter",
    "ForChild",
    "InheritError",
    "MemoryMap",
    "PopenOptions",
    "Protection",
    "SharedChild",
    "TokenError",
    "channel",
    "spawn",
]

__version__ = "0.1.0"

_REDUCTION = "multiprocessing.reduction"
# The other picklers taught to send memories when their module loads (``_loky``): loky's
# registry, in loky and in joblib's copy of it (joblib's default backend), and joblib's
# multiprocessing backend, which pickles with a pickler of its own.
_OTHER_PICKLERS = frozenset(
    {"loky.backend.reduction", "joblib.externals.loky.backend.reduction", "joblib.pool"}
)


class _ReducerHook:
    """An import hook: multiprocessing's pickler learns to send memories when it loads.

    Only the check of the name is here; the work (``_multiprocessing``) is imported when
    multiprocessing.reduction is, so a child that never uses multiprocessing does not
    pay for it.  Likewise the names that annotations use are bound when ``typing`` or
    ``inspect`` loads (``_hints``), so that ``typing.get_type_hints()`` can evaluate them.
    """

    # The mark by which a second copy of anonshm (imported afresh) finds this hook and
    # replaces it, instead of installing a second one beside it.
    anonshm_reducer_hook = True

    def find_spec(
        self, fullname: str, path: "Sequence[str] | None", target: "ModuleType | None" = None, /
    ) -> "ModuleSpec | None":
        if fullname in _HINT_TRIGGERS:
            from ._hints import find_spec as find_hinted  # noqa: PLC0415 - loaded already

            return find_hinted(fullname, path, target)
        if fullname in _OTHER_PICKLERS:
            from ._loky import find_spec as find_other  # noqa: PLC0415 - as below

            return find_other(fullname, path, target)
        if fullname != _REDUCTION:
            return None
        from ._multiprocessing import find_spec  # noqa: PLC0415 - the point

        return find_spec(fullname, path, target)


sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "anonshm_reducer_hook", False)]
sys.meta_path.insert(0, _ReducerHook())
if _REDUCTION in sys.modules:  # multiprocessing came first: register now (again is harmless)
    from ._multiprocessing import register

    register(sys.modules[_REDUCTION])
    del register
for _name in sorted(_OTHER_PICKLERS & sys.modules.keys()):  # loky or joblib came first
    from ._loky import register as register_other

    register_other(sys.modules[_name])
    del register_other

# Loaded on first use, so a child that only maps the memory it inherited never pays for
# them: spawn and its types come with subprocess and typing (~10 ms of import), and
# Protection with enum (~3 ms; inside the package a protection is a plain int).
# Channels come with select, struct and the socket module's C half (~1 ms).
_LAZY = frozenset({"PopenOptions", "SharedChild", "spawn", "Protection"})
_CHANNELS = frozenset({"ChannelReader", "ChannelWriter", "channel"})


if not TYPE_CHECKING:  # a checker sees the names imported above, and no fallback

    def __getattr__(name: str) -> object:
        # The imports are here on purpose (PLC0415): the first use pays for them.
        if name == "Protection":
            from . import _protection as module  # noqa: PLC0415
        elif name in _LAZY:
            from . import _spawn as module  # noqa: PLC0415
        elif name in _CHANNELS:
            from . import _channel as module  # noqa: PLC0415
        else:
            raise AttributeError(f"module 'anonshm' has no attribute {name!r}")
        value = getattr(module, name)
        globals()[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY, *_CHANNELS})


del TYPE_CHECKING, sys  # only the public names stay public
