"""multiprocessing integration: a memory pickled by multiprocessing carries its descriptor.

Only multiprocessing's own pickler knows the reducer registered here; plain ``pickle``
meets ``AnonymousMemory.__reduce__`` and is refused.  The descriptor travels through
multiprocessing's ``DupFd``: handed to the child at spawn/forkserver start, or served by
the parent's resource sharer (``SCM_RIGHTS`` over a Unix socket) for pools and queues.

Importing multiprocessing costs about 5 ms, five times what ``import anonshm`` costs a
child that only maps inherited memory; so the reducer is registered when
``multiprocessing.reduction`` is imported (a program that pickles with multiprocessing
always imports it), or at once if it already is.  The import hook that notices is in
``anonshm/__init__.py``; this module is loaded only when multiprocessing is.
"""

from __future__ import annotations

import os
import sys

from ._backend import take
from ._errors import TokenError
from ._hints import find_elsewhere
from ._holder import Pending, close_all
from ._memory import AnonymousMemory
from ._wire import READ_WRITE, check_protection

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Protocol

    class _DupFd(Protocol):
        def detach(self) -> int: ...

    from importlib.machinery import ModuleSpec
    from types import ModuleType

__all__ = ["find_spec", "register"]


def _reduce(memory: AnonymousMemory) -> tuple[Callable[..., AnonymousMemory], tuple[object, ...]]:
    holder = memory._holder
    try:
        if holder is None:
            raise ValueError  # half-built: as closed
        # Borrowed, so that the number duplicated is this memory's, whatever another
        # thread closes or opens meanwhile (pools pickle in a thread of their own).
        with holder.borrow() as (fd, protection, _):
            dup = _duplicate(fd, protection)
    except ValueError:
        if holder is not None and not holder.closed:
            raise
        # Pools pickle their arguments later, in a thread: the usual cause is closing
        # the memory right after submit().
        raise ValueError(
            f"{memory!r} was closed before multiprocessing sent it; keep it open until "
            "the worker has received it (e.g. until the task's result is in)"
        ) from None
    return _rebuild, (dup, memory.name, protection)


def _duplicate(fd: int, protection: int) -> _DupFd:
    from multiprocessing import context, reduction, util  # noqa: PLC0415 - loaded: calling us

    if sys.platform == "win32":
        # The stdlib's DupHandle: duplicated into the worker when it unpickles, with
        # no more access than this memory has.
        from ._winsection import READ_ONLY_ACCESS, READ_WRITE_ACCESS  # noqa: PLC0415

        access = READ_WRITE_ACCESS if protection == READ_WRITE else READ_ONLY_ACCESS
        handle: _DupFd = reduction.DupHandle(fd, access)
        return handle

    popen = context.get_spawning_popen()
    if popen is None:
        # A pool, a queue: the resource sharer duplicates the descriptor now.
        dup: _DupFd = reduction.DupFd(fd)
        return dup
    # A Process being started: the number is passed to the child a moment later, so
    # pass a duplicate of our own, closed when the Popen goes.
    own = Pending()
    util.Finalize(popen, close_all, (own,))  # first: the duplicate is owned when it exists
    take(own, os.dup, fd)
    shared: _DupFd = popen.DupFd(popen.duplicate_for_child(own[0]))
    return shared


def _rebuild(dup: _DupFd, name: str, protection: int) -> AnonymousMemory:
    protection = check_protection(protection, "protection")
    what = f"memory {name!r} from multiprocessing"
    pending = Pending()
    try:
        pending.append(dup.detach())
        if sys.platform != "win32":  # DupHandle makes a non-inheritable handle already
            os.set_inheritable(pending[-1], False)
        return AnonymousMemory._adopt(pending, protection, TokenError, what, name=name, handed=True)
    finally:
        close_all(pending)


def register(reduction: ModuleType) -> None:
    """Register the reducers with a loaded multiprocessing.reduction."""
    reduction.register(AnonymousMemory, _reduce)
    ends = sys.modules.get("anonshm._end")  # channels, if loaded: else they register later
    for kind in getattr(ends, "KINDS", ()):
        reduction.register(kind, ends.reduce)  # type: ignore[union-attr]


class _RegisteringLoader:
    """Runs the real loader of a pickler's module, then registers the reducers with it."""

    def __init__(self, loader: object, register: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._register = register

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)  # get_source, is_package, ... as before

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        self._register(module)


def find_spec(
    fullname: str,
    path: Sequence[str] | None,
    target: ModuleType | None = None,
    *,
    register: Callable[[ModuleType], None] = register,
) -> ModuleSpec | None:
    """The spec of multiprocessing.reduction, its loader wrapped to register the reducer.

    Called by the import hook in ``anonshm/__init__.py`` for that one module, every time
    it loads (a reload registers again); and by ``_loky`` for the modules of the other
    picklers it teaches, with their ``register``.  It asks the other finders
    (``_hints.find_elsewhere``) and only wraps the loader they return.  With no spec, or a
    loader it cannot wrap, it steps aside and the import proceeds untouched: the
    reducer is then not registered, and pickling a memory stays the clear
    ``TypeError`` of plain pickle.
    """
    spec = find_elsewhere(fullname, path, target)
    if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
        spec.loader = _RegisteringLoader(spec.loader, register)  # type: ignore[assignment]
    return spec
