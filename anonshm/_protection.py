"""Protection: what a memory or a map may do, with NSPR's numeric values.

Loaded on first use (``anonshm.Protection``, or a ``protection`` property): inside the
package a protection is a plain int (``_wire``), so a child that only maps inherited
memory never imports ``enum``.
"""

from __future__ import annotations

import enum

from . import _wire

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

    READ_ONLY = _wire.READ_ONLY
    READ_WRITE = _wire.READ_WRITE
    WRITE_COPY = _wire.WRITE_COPY

    def allows(self, wanted: Protection) -> bool:
        """Whether a memory of this protection may be mapped with ``wanted``.

        Private copies (``READ_ONLY``, ``WRITE_COPY``) may be made of any memory; a
        shared writable map (``READ_WRITE``) needs a ``READ_WRITE`` memory.
        """
        return _wire.allows(self, wanted)

    @property
    def mmap_args(self) -> tuple[int, int]:
        """The ``mmap`` flags and page protection NSPR uses for this protection (POSIX).

        Raises:
            AttributeError: on Windows, where maps take no ``mmap`` flags.
        """
        import sys  # noqa: PLC0415 - loaded already; keeps the names below POSIX-only

        if sys.platform != "win32":
            from ._unix import MMAP_ARGS  # noqa: PLC0415 - POSIX only

            return MMAP_ARGS[self]
        raise AttributeError("mmap_args: Windows maps take no mmap flags")
