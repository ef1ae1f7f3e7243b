"""The Windows backend: the backend interface over ``_winsection``'s calls.

A memory is an unnamed pagefile-backed section, committed in full at creation (so
``reserve`` is always in effect) and never resized; its handles are never inheritable
and carry only section rights.  A read-only handle has ``FILE_MAP_READ`` alone and the
section's DACL refuses more, so no holder can map it for writing or duplicate it into a
writable one.  ``freeze()`` swaps this handle for a read-only one: the handles made
from it afterwards are read-only too, but writable handles handed out earlier keep
their access -- Windows has no seal for every holder.  There are no ``directory=``
files (NSPR ignores its directory on Windows) and no sockets that carry handles.
"""

import sys

assert sys.platform == "win32"  # for type checkers: Windows only

from . import _winsection  # noqa: E402 - after the platform check
from ._backend import Features, Inspected, take  # noqa: E402
from ._errors import AnonShmError  # noqa: E402
from ._winsection import close, format_token, parse_token, read_at, write_at  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "FEATURES",
    "TWIN",
    "child_duplicate",
    "close",
    "create",
    "duplicate",
    "flush",
    "format_token",
    "freeze",
    "inspect",
    "kernel_name",
    "map",
    "parse_token",
    "pass_to_child",
    "read_at",
    "readonly",
    "unmap",
    "write_at",
]

FEATURES: "Final" = Features(
    "windows",
    "CreateFileMappingW with no name",
    fixed_size=True,
    freeze=False,
    read_only="DuplicateHandle with FILE_MAP_READ only; the DACL refuses more",
    sockets=False,
    names=False,
)
TWIN: "Final" = False


def create(pending: list[int], name: str, size: int, directory: str | None, reserve: bool) -> None:
    """Append a new read-write handle of ``size`` zero bytes (committed: reserved)."""
    if directory is not None:
        raise AnonShmError(
            "directory= has no meaning on Windows: a memory is always an unnamed section "
            "of the page file (NSPR ignores its directory there too)"
        )
    take(pending, _winsection.create, size)


# Windows' calls are ctypes wrappers (Python): an interrupt inside one can still lose
# the handle it made, unlike the built-in calls of the POSIX backends.


def readonly(pending: list[int], fd: int, twin: int) -> None:
    """Append a new handle of the same section with ``FILE_MAP_READ`` access only."""
    take(pending, _winsection.reopen_readonly, fd)


def duplicate(pending: list[int], fd: int) -> None:
    """Append a new non-inheritable handle of the same section, with the same access."""
    take(pending, _winsection.duplicate, fd)


def inspect(fd: int) -> Inspected:
    """What ``fd`` is; ``OSError`` if it is no open handle."""
    try:
        size, writable = _winsection.inspect(fd)
    except ValueError as exc:
        return Inspected(
            str(exc),
            named=False,
            size=0,
            access="r",
            fixed_size=True,
            frozen=False,
            revocable=False,
        )
    return Inspected(
        None,
        named=False,
        size=size,
        access="rw" if writable else "r",
        fixed_size=True,
        frozen=False,
        revocable=False,
    )


def freeze(fd: int) -> None:
    """Nothing to do on the section itself: the caller swaps in a read-only handle."""


def kernel_name(fd: int) -> str | None:
    """None: an unnamed section has no name."""
    return None


def map(
    fd: int, offset: int, length: int, protection: int, *, populate: bool, hugepages: bool
) -> tuple[object, memoryview]:
    """Map the window (``populate``: the section is committed; ``hugepages``: a hint only)."""
    view = _winsection.map(fd, offset, length, protection)
    return view, view


def unmap(mapping: object, buf: memoryview) -> None:
    """Release ``buf``; the view is unmapped with the last buffer made from it."""
    buf.release()


def flush(mapping: object) -> None:
    """Nothing to write back: a pagefile section has no file."""


def child_duplicate(pending: list[int], fd: int) -> None:
    """Append an inheritable duplicate for one child, given it through its handle list."""
    take(pending, _winsection.inheritable_duplicate_for_child, fd)


def pass_to_child(options: "dict[str, Any]", fds: list[int]) -> None:
    """Give a child exactly ``fds`` (at the same values) through its STARTUPINFO."""
    if options.get("close_fds") is False:
        raise ValueError("spawn passes memories in a handle list, which needs close_fds=True")
    options["startupinfo"] = _winsection.child_startupinfo(fds, options.get("startupinfo"))
