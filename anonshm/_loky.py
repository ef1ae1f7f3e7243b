"""loky and joblib integration: their own picklers learn to send a memory's descriptor.

loky (standalone, and the copy vendored as ``joblib.externals.loky`` that runs joblib's
default backend) pickles tasks with cloudpickle and a registry of its own,
``loky.backend.reduction.register``, never multiprocessing's ``ForkingPickler``.  The
reducer registered there is multiprocessing's, unchanged: loky's workers take
descriptors the same two ways (a worker being started takes its ``initargs`` through
loky's Popen, which has multiprocessing's ``DupFd``/``duplicate_for_child``; a task
through multiprocessing's resource sharer, whose authkey loky hands its workers).

joblib's multiprocessing backend (``joblib.pool.MemmappingPool``) pickles its tasks with
``joblib.pool.CustomizablePickler``: a plain ``pickle.Pickler`` given joblib's reducers
for numpy arrays.  So with numpy installed a memory met the plain-pickle refusal (which
says to pass it to multiprocessing: it had been), and without numpy the pool fell back
to multiprocessing's pickler and sent it.  joblib has no registry for that pickler, but
it takes a ``reducers`` mapping: ``joblib.pool``'s name for it is replaced with a
subclass that adds ours, the caller's reducers still first.

Loaded only when one of those modules is (see the import hook in ``__init__.py``), so
neither anonshm nor its children import loky or joblib.
"""

from __future__ import annotations

import sys

from . import _multiprocessing
from ._memory import AnonymousMemory

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

__all__ = ["REDUCERS", "find_spec", "register"]

# What loky's and joblib's picklers learn to send, each type with its multiprocessing
# reducer: another type is one more line.
REDUCERS: dict[type[Any], Callable[[Any], tuple[Callable[..., object], tuple[object, ...]]]] = {
    AnonymousMemory: _multiprocessing._reduce,
}
_ends = sys.modules.get(f"{__package__}._end")  # channels, if loaded: else they add theirs
for _kind in getattr(_ends, "KINDS", ()):
    REDUCERS[_kind] = _ends.reduce  # type: ignore[union-attr]

_JOBLIB_POOL = "joblib.pool"


def register(module: ModuleType) -> None:
    """Teach a loaded pickler module the reducers: a loky ``reduction``, or ``joblib.pool``."""
    if module.__name__ == _JOBLIB_POOL:
        _teach_joblib_pool(module)
        return
    for cls, reduce in REDUCERS.items():
        module.register(cls, reduce)


def _teach_joblib_pool(pool: ModuleType) -> None:
    found = getattr(pool, "CustomizablePickler", None)
    if not isinstance(found, type):
        return  # a joblib without it: a memory meets the plain-pickle TypeError
    base: Any = found  # joblib's, untyped

    def __init__(  # noqa: N807 - the method of the class made below
        self: object,
        writer: object,
        reducers: dict[type, object] | None = None,
        *args: object,
        **kwargs: object,
    ) -> None:
        # Ours first, so that a reducer the caller gave joblib for the same type wins.
        base.__init__(self, writer, {**REDUCERS, **(reducers or {})}, *args, **kwargs)

    # A subclass, not an edit of joblib's class: its methods stay as they are.  Made
    # again on a second registration (a reload), on top of the class then in place.
    namespace = {"__init__": __init__, "__module__": base.__module__, "__doc__": base.__doc__}
    vars(pool)["CustomizablePickler"] = type(base.__name__, (base,), namespace)


def find_spec(
    fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
) -> ModuleSpec | None:
    """The spec of a loky ``reduction`` or ``joblib.pool``, its loader wrapped to register.

    Called by the import hook in ``anonshm/__init__.py`` for those modules; the search
    and the wrapping are multiprocessing's (``_multiprocessing.find_spec``).
    """
    return _multiprocessing.find_spec(fullname, path, target, register=register)
