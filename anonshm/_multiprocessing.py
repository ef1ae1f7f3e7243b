"""multiprocessing integration: a memory pickled by multiprocessing carries its descriptor.

Only multiprocessing's own pickler knows the reducer registered here; plain ``pickle``
meets ``AnonymousMemory.__reduce__`` and is refused.  The descriptor travels through
multiprocessing's ``DupFd``: handed to the child at spawn/forkserver start, or served by
the parent's resource sharer (``SCM_RIGHTS`` over a Unix socket) for pools and queues.

Importing multiprocessing costs about 5 ms, a third of what ``import anonshm`` would
cost a child that only maps inherited memory; so the reducer is registered when
``multiprocessing.reduction`` is imported (a program that pickles with multiprocessing
always imports it), or at once if it already is.
"""

from __future__ import annotations

import os
import sys
from _thread import get_ident

from ._errors import TokenError
from ._memory import AnonymousMemory

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Final, Protocol

    class _DupFd(Protocol):
        def detach(self) -> int: ...

    from importlib.machinery import ModuleSpec
    from types import ModuleType

__all__ = ["install"]

_REDUCTION: Final = "multiprocessing.reduction"


def _reduce(memory: AnonymousMemory) -> tuple[Callable[..., AnonymousMemory], tuple[object, ...]]:
    from multiprocessing import reduction  # noqa: PLC0415 - loaded by now: it is calling us

    if memory.closed:
        # Pools pickle their arguments later, in a thread: the usual cause is closing
        # the memory right after submit().
        raise ValueError(
            f"{memory!r} was closed before multiprocessing sent it; keep it open until "
            "the worker has received it (e.g. until the task's result is in)"
        )
    dup = reduction.DupFd(memory.fileno())
    return _rebuild, (dup, memory.name, memory._protection)


def _rebuild(dup: _DupFd, name: str, protection: int) -> AnonymousMemory:
    fd = dup.detach()
    os.set_inheritable(fd, False)
    what = f"memory {name!r} from multiprocessing"
    return AnonymousMemory._adopt(fd, protection, TokenError, what, name=name)


def _register(reduction: ModuleType) -> None:
    reduction.register(AnonymousMemory, _reduce)


class _RegisteringLoader:
    """Runs the real loader of multiprocessing.reduction, then registers the reducer."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)  # get_source, is_package, ... as before

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        _register(module)


class _RegisterOnImport:
    """An import hook: wraps the loader of multiprocessing.reduction, every time it loads.

    It asks the other finders for the module, as the import system would have, and
    only wraps the loader they return (a reload loads it again, and registers again).
    With no spec, or a loader it cannot wrap, it steps aside and the import proceeds
    untouched: the reducer is then not registered, and pickling a memory stays the
    clear ``TypeError`` of plain pickle.
    """

    # Recognised by this mark, not by class: a second copy of this module (anonshm
    # imported afresh) must replace the hook, never stand beside it and ask it back.
    anonshm_reducer_hook = True

    def __init__(self) -> None:
        self._resolving: set[int] = set()  # threads inside find_spec right now

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None, /
    ) -> ModuleSpec | None:
        thread = get_ident()
        if fullname != _REDUCTION or thread in self._resolving:
            return None
        self._resolving.add(thread)  # a finder that asks the meta path again meets None
        try:
            for finder in sys.meta_path:
                if getattr(finder, "anonshm_reducer_hook", False):
                    continue
                find = getattr(finder, "find_spec", None)
                spec: ModuleSpec | None = None if find is None else find(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _RegisteringLoader(spec.loader)  # type: ignore[assignment]
                    return spec
            return None
        finally:
            self._resolving.discard(thread)


def install() -> None:
    """Register the reducer now if multiprocessing is loaded, and whenever it loads."""
    reduction = sys.modules.get(_REDUCTION)
    if reduction is not None:
        _register(reduction)
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "anonshm_reducer_hook", False)]
    sys.meta_path.insert(0, _RegisterOnImport())
