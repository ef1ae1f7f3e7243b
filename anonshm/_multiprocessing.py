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
from importlib.machinery import PathFinder
from typing import TYPE_CHECKING, Final, Protocol

from ._errors import TokenError
from ._memory import AnonymousMemory

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    from ._protection import Protection

__all__ = ["install"]

_REDUCTION: Final = "multiprocessing.reduction"


class _DupFd(Protocol):
    def detach(self) -> int: ...


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
    return _rebuild, (dup, memory.name, memory.protection)


def _rebuild(dup: _DupFd, name: str, protection: Protection) -> AnonymousMemory:
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
    """A one-shot import hook: wraps the loader of multiprocessing.reduction."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None, /
    ) -> ModuleSpec | None:
        if fullname != _REDUCTION:
            return None
        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None  # an unusual install: let the normal machinery load it
        spec.loader = _RegisteringLoader(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    """Register the reducer now if multiprocessing is loaded, else when it is."""
    reduction = sys.modules.get(_REDUCTION)
    if reduction is not None:
        _register(reduction)
    elif not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
