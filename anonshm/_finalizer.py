"""The safety net for handles and maps never closed: a lighter ``weakref.finalize``.

``weakref.finalize`` costs about 2 us to arm and detach, as much as a ``memfd_create``;
on the create/map/close path that doubled anonshm's overhead over the raw system calls
(see benchmarks/).  This is the same mechanism -- a weak reference whose callback never
holds the object -- with a plain dict as the registry, at about 0.1 us.  Unlike
``weakref.finalize`` it registers no ``atexit`` hook: objects still alive at exit are
finalized as the interpreter tears down (if at all), and the process's exit closes and
unmaps everything anyway.
"""

from __future__ import annotations

from _weakref import ref  # weakref.ref, without importing weakref.py

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["forget", "rearm", "watch"]

_Ref = ref[object]
_pending: dict[_Ref, tuple[Callable[..., None], tuple[object, ...]]] = {}


def _fire(
    ref: _Ref,
    _pending: dict[_Ref, tuple[Callable[..., None], tuple[object, ...]]] = _pending,
) -> None:
    # The default argument keeps the registry reachable during interpreter teardown.
    entry = _pending.pop(ref, None)
    if entry is not None:
        callback, args = entry
        callback(*args)


def watch(obj: object, callback: Callable[..., None], *args: object) -> _Ref:
    """Call ``callback(*args)`` when ``obj`` is collected, unless forgotten first."""
    watcher = ref(obj, _fire)
    _pending[watcher] = (callback, args)
    return watcher


def rearm(ref: _Ref, callback: Callable[..., None], *args: object) -> None:
    """Change what a watched object's collection calls."""
    _pending[ref] = (callback, args)


def forget(ref: _Ref) -> None:
    """Call nothing when the object is collected (it was closed properly)."""
    _pending.pop(ref, None)
