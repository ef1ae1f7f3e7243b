"""MemoryMap: one window of an anonymous memory mapped into this process."""

import errno
import mmap
import sys
from _warnings import warn  # what warnings.warn is, without importing warnings.py
from _weakref import ref  # weakref.ref, without importing weakref.py

from ._wire import PROTECTION_NAMES, WRITE_COPY, protection_member

# Not `from typing import ...`: importing typing costs a fresh child ~6 ms, more than a
# small handoff (benchmarks/).  Checkers see the real decorators; at run time final and
# overload do what matters to Python: @overload stubs are replaced by the
# implementation that follows them.
TYPE_CHECKING = False
if not TYPE_CHECKING:  # first, so that linters bind the names to typing's below

    def final(obj):
        return obj

    def overload(func):
        return func


if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Final, Self, final, overload  # noqa: TC004 - stand-ins above

    from typing_extensions import Buffer

    from ._protection import Protection


__all__ = ["MMAP_ARGS", "MemoryMap", "final", "forget", "rearm", "watch"]

# The mmap flags and page protection NSPR uses, indexed by protection (0, 1, 2).
MMAP_ARGS: "Final" = (
    (mmap.MAP_PRIVATE, mmap.PROT_READ),
    (mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE),
    (mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE),
)

_POPULATE: int = getattr(mmap, "MAP_POPULATE", 0)
_HUGEPAGE: int = getattr(mmap, "MADV_HUGEPAGE", 0)
_GRANULARITY: int = mmap.ALLOCATIONGRANULARITY


# The safety net for handles and maps never closed: a lighter ``weakref.finalize``.
# That costs about 2 us to arm and detach, as much as a ``memfd_create``: on the
# create/map/close path it doubled anonshm's overhead over the raw system calls
# (benchmarks/).  This is the same mechanism -- a weak reference whose callback never
# holds the object -- with a plain dict as the registry, at about 0.1 us.  Unlike
# ``weakref.finalize`` it registers no ``atexit`` hook: objects still alive at exit are
# finalized as the interpreter tears down (if at all), and the process's exit closes
# and unmaps everything anyway.

_Ref = ref[object]
_pending: "dict[_Ref, tuple[Callable[..., None], tuple[object, ...]]]" = {}


def _fire(
    watcher: _Ref,
    _pending: "dict[_Ref, tuple[Callable[..., None], tuple[object, ...]]]" = _pending,
) -> None:
    # The default argument keeps the registry reachable during interpreter teardown.
    entry = _pending.pop(watcher, None)
    if entry is not None:
        callback, args = entry
        callback(*args)


def watch(obj: object, callback: "Callable[..., None]", *args: object) -> _Ref:
    """Call ``callback(*args)`` when ``obj`` is collected, unless forgotten first."""
    watcher = ref(obj, _fire)
    _pending[watcher] = (callback, args)
    return watcher


def rearm(watcher: _Ref, callback: "Callable[..., None]", *args: object) -> None:
    """Change what a watched object's collection calls."""
    _pending[watcher] = (callback, args)


def forget(watcher: _Ref) -> None:
    """Call nothing when the object is collected (it was closed properly)."""
    _pending.pop(watcher, None)


def _mmap(fd: int, length: int, flags: int, prot: int, offset: int) -> mmap.mmap:
    # Python < 3.13 keeps a duplicate of the descriptor in every mmap object (for size()
    # and resize(), which a MemoryMap never calls); from 3.13 on a map costs none.
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, length, flags, prot, offset=offset, trackfd=False)
    return mmap.mmap(fd, length, flags, prot, offset=offset)


def _unmap(mm: mmap.mmap, buf: memoryview) -> None:
    # A view made from ``buf`` (a slice, a numpy array) keeps the pages: releasing or
    # closing raises BufferError then, and the mmap goes with the last such view.
    try:
        buf.release()
        mm.close()
    except BufferError:
        pass


def _advise(mm: mmap.mmap, advice: int) -> None:
    # EINVAL: a kernel built without that advice (no transparent huge pages).
    if not advice:
        return
    try:
        mm.madvise(advice)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


def _warn_unclosed(
    label: str, offset: int, length: int, _warn: "Callable[..., None]" = warn
) -> None:
    # Holds nothing of the map: its pages go with the map and the views made from it.
    _warn(f"unclosed MemoryMap {label!r} offset={offset} length={length}", ResourceWarning)


@final
class MemoryMap:
    """A window of an :class:`~anonshm.AnonymousMemory` mapped into this process.

    Made by :meth:`AnonymousMemory.map`, never directly.  ``buf`` is a ``memoryview`` of
    exactly the window; the map itself supports ``len()``, indexing, slice assignment
    and, on Python >= 3.12, the buffer protocol.  Closing the map (or the memory it came
    from) unmaps it from this process only; the memory itself lives on while any
    process holds it.  Views made from ``buf`` before the close (slices, numpy arrays)
    stay valid and keep the pages mapped until the last of them is released.

    Example:
        >>> from anonshm import AnonymousMemory
        >>> with AnonymousMemory(10) as mem, mem.map(offset=2, length=5) as view:
        ...     view[:5] = b"hello"
        ...     bytes(view.buf), len(view)
        (b'hello', 5)
    """

    # Defaults: close() and repr() work on an object whose __init__ failed.
    _buf: memoryview | None = None
    _mmap: mmap.mmap | None = None
    _ref: ref[object] | None = None

    def __init__(
        self,
        fd: int,
        offset: int,
        length: int,
        protection: int,
        *,
        populate: bool = False,
        hugepages: bool = False,
        label: str = "anonshm",
    ) -> None:
        """Map ``length`` bytes of ``fd`` from ``offset``; callers have checked the window."""
        self._offset = offset
        self._length = length
        self._protection = protection
        self._label = label
        # mmap offsets must be page-aligned: map from the page start, then slice.
        skew = offset % _GRANULARITY
        flags, prot = MMAP_ARGS[protection]
        if not (populate or hugepages):  # the common case, in the fewest steps
            mm = _mmap(fd, length + skew, flags, prot, offset=offset - skew)
        else:
            # MAP_POPULATE write-faults a private writable map: a copy of every page.
            # Such a map is only read ahead instead.
            private_copy = protection == WRITE_COPY
            if populate and not private_copy:
                flags |= _POPULATE
            mm = _mmap(fd, length + skew, flags, prot, offset=offset - skew)
            try:
                if populate and private_copy:
                    _advise(mm, mmap.MADV_WILLNEED)
                if hugepages:
                    # Only a hint: shmem uses huge pages only if shmem_enabled allows "advise".
                    _advise(mm, _HUGEPAGE)
            except BaseException:
                mm.close()  # not left mapped until the traceback lets go of this frame
                raise
        buf = memoryview(mm)
        if skew:
            whole, buf = buf, buf[skew:]
            whole.release()
        self._mmap = mm
        self._buf = buf
        self._ref = watch(self, _warn_unclosed, label, offset, length)

    @property
    def buf(self) -> memoryview:
        """A ``memoryview`` of exactly the window (read-only for READ_ONLY maps).

        Raises:
            ValueError: the map is closed.
        """
        buf = self._buf
        if buf is None:
            raise ValueError("I/O operation on a closed MemoryMap")
        return buf

    @property
    def offset(self) -> int:
        """Where the window starts in the memory, in bytes."""
        return self._offset

    @property
    def protection(self) -> "Protection":
        """This map's protection (what writes do: shared, private or refused)."""
        return protection_member(self._protection)

    @property
    def closed(self) -> bool:
        """Whether this map has been closed (by itself or by its memory)."""
        return self._buf is None

    def close(self) -> None:
        """Unmap the window from this process; calling it again does nothing.

        Views made from :attr:`buf` beforehand keep the pages mapped until the last of
        them is released; nothing else can reach them after this call.
        """
        buf, mm = self._buf, self._mmap
        if buf is None or mm is None:
            return
        if self._ref is not None:  # first: interrupted after it, close() again finishes
            forget(self._ref)
            self._ref = None  # no callback at all when the object goes
        self._buf = self._mmap = None
        _unmap(mm, buf)

    def flush(self) -> None:
        """Ask the kernel to write the window back to its file (a no-op for memfd)."""
        if self._mmap is None:
            raise ValueError("I/O operation on a closed MemoryMap")
        self._mmap.flush()

    def __len__(self) -> int:
        return len(self.buf)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> bytes: ...
    def __getitem__(self, index: int | slice) -> int | bytes:
        """One byte as an ``int``, or a slice copied out as ``bytes``."""
        if isinstance(index, slice):
            return self.buf[index].tobytes()
        return self.buf[index]

    @overload
    def __setitem__(self, index: int, value: int) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: "Buffer") -> None: ...
    def __setitem__(self, index: int | slice, value: "int | Buffer") -> None:
        """Write one byte or a same-length slice (``TypeError`` on a READ_ONLY map)."""
        buf = self.buf
        try:
            buf[index] = value  # type: ignore[index,assignment]
        except ValueError:
            if isinstance(index, slice) and not isinstance(value, int):
                wanted = len(range(*index.indices(len(buf))))
                got = memoryview(value).nbytes
                if wanted != got:
                    raise ValueError(
                        f"slice assignment of {got} bytes to a window of {wanted} bytes"
                    ) from None
            raise

    if sys.version_info >= (3, 12):

        def __buffer__(self, flags: int, /) -> memoryview:
            """The buffer protocol (Python >= 3.12): ``memoryview(view)``, numpy, ..."""
            return memoryview(self.buf)

        def __release_buffer__(self, view: memoryview, /) -> None:
            view.release()

    def __enter__(self) -> "Self":
        if self._buf is None:
            raise ValueError("cannot enter a closed MemoryMap")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: "TracebackType | None",
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a MemoryMap cannot be pickled; hand over its AnonymousMemory instead")

    def __repr__(self) -> str:
        state = "closed" if self._buf is None else "open"
        return (
            f"<MemoryMap {self._label!r} offset={self._offset} length={self._length} "
            f"protection={PROTECTION_NAMES[self._protection]} {state}>"
        )
