"""The Linux backend: memfd_create, seals, O_TMPFILE and /proc.

A memory is a memfd: no name in any filesystem, not bound by the size of /dev/shm,
sealed against growing and shrinking at creation; ``freeze()`` seals it against every
new write (``F_SEAL_FUTURE_WRITE``).  A read-only descriptor is the memfd reopened
through ``/proc/self/fd``.  ``directory=`` gives NSPR's backing-file strategy
(``_unix.backing_file``).  The interface is ``_backend.Backend``.
"""

import errno
import fcntl
import os
import sys

assert sys.platform == "linux"  # for type checkers: Linux only (they skip the rest elsewhere)

from ._backend import Features, Inspected, take  # noqa: E402
from ._errors import AnonShmError  # noqa: E402
from ._unix import (  # noqa: E402
    backing_file,
    child_duplicate,
    close,
    duplicate,
    flush,
    inspect_fd,
    map,
    pass_to_child,
    read_at,
    unmap,
    write_at,
)
from ._wire import format_token, parse_token  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "FEATURES",
    "FIXED_SIZE_SEALS",
    "TWIN",
    "WRITE_SEALS",
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
    "memfd_flags",
    "parse_token",
    "pass_to_child",
    "read_at",
    "readonly",
    "seals",
    "unmap",
    "write_at",
]

FEATURES: "Final" = Features(
    "linux",
    "memfd_create",
    fixed_size=True,
    freeze=True,
    read_only="reopened through /proc/self/fd",
    sockets=True,
    names=True,
)
TWIN: "Final" = False
MFD_NOEXEC_SEAL: "Final" = 0x0008  # Linux >= 6.3; Python 3.11's os module lacks it
F_SEAL_FUTURE_WRITE: "Final" = 0x0010  # Linux >= 5.1; Python 3.11's fcntl lacks it
FIXED_SIZE_SEALS: "Final" = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
FREEZE_SEALS: "Final" = F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL
# Either seal refuses new writes; F_SEAL_SEAL alone (every tmpfs file has it) does not.
WRITE_SEALS: "Final" = F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_WRITE
_MEMFD_PREFIX: "Final" = "/memfd:"
_DELETED_SUFFIX: "Final" = " (deleted)"

# Cleared the first time the kernel refuses MFD_NOEXEC_SEAL (EINVAL before 6.3).
_memfd_flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL


def memfd_flags() -> int:
    """The flags memfd_create is called with (without MFD_NOEXEC_SEAL before Linux 6.3)."""
    return _memfd_flags


def create(pending: list[int], name: str, size: int, directory: str | None, reserve: bool) -> None:
    """Append a new read-write descriptor of ``size`` zero bytes, that no path leads to.

    It goes into the caller's ``pending`` the moment it exists, and stays there, the
    caller's to close, whether this returns or raises.
    """
    if directory is None:
        _memfd(pending, name)
    else:
        backing_file(pending, directory, twin=False)
    fd = pending[-1]
    os.ftruncate(fd, size)
    if reserve:
        # Past the memory left, fallocate on a memfd or tmpfs file is no ENOMEM: the
        # OOM killer comes.  So the limits in sight are checked first, with this size.
        from . import _limits  # noqa: PLC0415 - read only by reserve=True

        _limits.check(fd, size, directory)
        # Allocates every page now: ENOSPC here instead of SIGBUS on a later write.
        os.posix_fallocate(fd, 0, size)
    if directory is None:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, FIXED_SIZE_SEALS)


def _memfd(pending: list[int], name: str) -> None:
    global _memfd_flags
    try:
        take(pending, os.memfd_create, name, _memfd_flags)
    except OSError as exc:
        if exc.errno != errno.EINVAL or not _memfd_flags & MFD_NOEXEC_SEAL:
            raise
    else:
        return
    _memfd_flags &= ~MFD_NOEXEC_SEAL
    take(pending, os.memfd_create, name, _memfd_flags)


def seals(fd: int) -> int:
    """The seals of ``fd``'s file; 0 for files that cannot be sealed."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a memfd (a file on disk or tmpfs)
            return 0
        raise


def inspect(fd: int) -> Inspected:
    """What ``fd`` is; the seals first, so that a sealed size read after is the final one.

    Read the other way round, a sender could shrink the memory, then seal it, between
    the two reads, and this process would map pages that are gone (``SIGBUS``).
    """
    found = seals(fd)
    return inspect_fd(
        fd,
        fixed_size=found & FIXED_SIZE_SEALS == FIXED_SIZE_SEALS,
        frozen=bool(found & WRITE_SEALS),
        # hugetlb: a holder can punch a hole and take the huge pages back, and the next
        # touch finds none left; only a write seal rules hole punching out.
        revocable=not found & WRITE_SEALS,
    )


def freeze(fd: int) -> None:
    """Seal ``fd``'s file against every new write; maps already writable keep working."""
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, FREEZE_SEALS)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EPERM):
            raise
        raise AnonShmError(
            "the kernel refused to seal it (only memfd memory can be sealed, not a "
            "directory= file or an NSPR file map; and only on Linux >= 5.1)"
        ) from exc


def readonly(pending: list[int], fd: int, twin: int) -> None:
    """Append a new read-only descriptor of the open file behind ``fd`` (no twin needed)."""
    try:
        take(pending, os.open, f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.isdir("/proc/self/fd"):
            raise
        # Linux has no other way to reopen a memfd read-only than its /proc entry.
        raise FileNotFoundError(
            errno.ENOENT,
            "cannot make a read-only descriptor: Linux reopens memory read-only through "
            "/proc/self/fd, and /proc is not mounted in this process's mount namespace",
        ) from None


def kernel_name(fd: int) -> str | None:
    """The name memfd_create recorded for ``fd``'s file, or None for other files."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return memfd_name(target)


def memfd_name(target: str) -> str | None:
    """The memfd name in a ``/proc/<pid>/fd`` link or ``maps`` path, or None."""
    if not target.startswith(_MEMFD_PREFIX):
        return None
    return target[len(_MEMFD_PREFIX) :].removesuffix(_DELETED_SUFFIX)
