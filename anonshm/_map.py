"""MemoryMap: one window of an anonymous memory mapped into this process."""

import sys
from _warnings import warn  # what warnings.warn is, without importing warnings.py

from ._backend import backend
from ._compat import protection_member
from ._hints import join
from ._net import forget, watch
from ._wire import PROTECTION_NAMES

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from _weakref import ref
    from collections.abc import Callable
    from types import TracebackType
    from typing import Self

    import typing_extensions

    from ._protection import Protection
if not TYPE_CHECKING:  # first, so that linters bind the names to typing's below
    from ._compat import final, overload
if TYPE_CHECKING:
    from typing import final, overload  # noqa: TC004 - the run-time stand-ins above
join(globals(), "Callable", "Protection", "Self", "TracebackType", "ref", "typing_extensions")


__all__ = ["MemoryMap"]


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
    _mmap: object = None  # the backend's mapping: an mmap.mmap on POSIX
    _ref: "ref[object] | None" = None

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
        mm, buf = backend.map(
            fd, offset, length, protection, populate=populate, hugepages=hugepages
        )
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
        backend.unmap(mm, buf)

    def flush(self) -> None:
        """Ask the kernel to write the window back to its file (a no-op for memfd)."""
        mm = self._mmap
        if mm is None:
            raise ValueError("I/O operation on a closed MemoryMap")
        backend.flush(mm)

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
    def __setitem__(self, index: slice, value: "typing_extensions.Buffer") -> None: ...
    def __setitem__(self, index: int | slice, value: "int | typing_extensions.Buffer") -> None:
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
