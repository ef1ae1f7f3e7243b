"""The safety net: what was never closed is closed when collected, with a ResourceWarning.

A weak reference whose callback never holds the object, as CPython's
``weakref.finalize`` does, with a plain dict as the registry.  ``weakref.finalize``
costs about 2 us to arm and detach, as much as a ``memfd_create``: on the
create/map/close path it doubled anonshm's overhead over the raw system calls
(benchmarks/); this costs about 0.1 us.  Unlike it, no ``atexit`` hook is registered:
objects still alive at exit are finalized as the interpreter tears down (if at all),
and the process's exit closes and unmaps everything anyway.
"""

from _weakref import ref  # weakref.ref, without importing weakref.py

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["forget", "watch", "watched"]

_Ref = ref[object]
_pending: "dict[_Ref, tuple[Callable[..., None], tuple[object, ...]]]" = {}


def _fire(
    watcher: _Ref,
    _pending: "dict[_Ref, tuple[Callable[..., None], tuple[object, ...]]]" = _pending,
) -> None:
    # The default argument keeps the registry reachable during interpreter teardown.
    try:
        entry = _pending.pop(watcher, None)
    except TypeError:  # a dead reference never hashed: collected before it was watched
        return
    if entry is not None:
        callback, args = entry
        callback(*args)


def watch(obj: object, callback: "Callable[..., None]", *args: object) -> _Ref:
    """Call ``callback(*args)`` when ``obj`` is collected, unless forgotten first.

    ``args`` must not hold ``obj`` (it would never be collected).
    """
    watcher = ref(obj, _fire)
    _pending[watcher] = (callback, args)
    return watcher


def forget(watcher: _Ref) -> None:
    """Call nothing when the object is collected (it was closed properly)."""
    _pending.pop(watcher, None)


def watched(callback: "Callable[..., None]") -> "Iterator[object]":
    """The live objects watched with ``callback`` (read after fork)."""
    for watcher, (known, _) in list(_pending.items()):
        obj = watcher()
        if known is callback and obj is not None:
            yield obj
