"""Protection: what a memory or a map may do, with NSPR's numeric values."""

from __future__ import annotations

import enum
import mmap

__all__ = ["Protection"]


class Protection(enum.IntEnum):
    """Access to a memory or to one map of it; the values are NSPR's ``PRFileMapProtect``.

    A memory's protection is the most that a map of it may ask.  ``READ_WRITE`` maps are
    shared: every holder sees their writes.  ``WRITE_COPY`` maps may be written, but the
    writes stay private to that map (copy on write).  ``READ_ONLY`` maps refuse writes.

    Example:
        >>> from anonshm import Protection
        >>> Protection(1)
        <Protection.READ_WRITE: 1>
        >>> Protection.READ_ONLY.allows(Protection.WRITE_COPY)
        True
    """

    READ_ONLY = 0
    READ_WRITE = 1
    WRITE_COPY = 2

    def allows(self, wanted: Protection) -> bool:
        """Whether a memory of this protection may be mapped with ``wanted``.

        Private copies (``READ_ONLY``, ``WRITE_COPY``) may be made of any memory; a
        shared writable map (``READ_WRITE``) needs a ``READ_WRITE`` memory.
        """
        return wanted is not Protection.READ_WRITE or self is Protection.READ_WRITE

    @property
    def mmap_args(self) -> tuple[int, int]:
        """The ``mmap`` flags and page protection NSPR uses for this protection."""
        return _MMAP_ARGS[self]


_MMAP_ARGS: dict[Protection, tuple[int, int]] = {
    Protection.READ_ONLY: (mmap.MAP_PRIVATE, mmap.PROT_READ),
    Protection.READ_WRITE: (mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE),
    Protection.WRITE_COPY: (mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE),
}
