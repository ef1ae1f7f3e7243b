"""The Linux backend: memfd_create, seals, O_TMPFILE and /proc.

A backend is a module of plain functions making the system calls -- ``create``,
``seals``, ``freeze``, ``reopen_readonly``, ``kernel_name`` -- and the constants
``FIXED_SIZE_SEALS``, ``FREEZE_SEALS``, ``WRITE_SEALS``, ``NAME`` and
``DEFAULT_STRATEGY``; ``_memory`` chooses one by platform.  It only makes system calls:
checks and bookkeeping live in ``_memory``.
"""

import errno
import fcntl
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "DEFAULT_STRATEGY",
    "FIXED_SIZE_SEALS",
    "FREEZE_SEALS",
    "NAME",
    "WRITE_SEALS",
    "create",
    "freeze",
    "kernel_name",
    "reopen_readonly",
    "seals",
]

NAME: "Final" = "linux"
DEFAULT_STRATEGY: "Final" = "memfd_create"
MFD_NOEXEC_SEAL: "Final" = 0x0008  # Linux >= 6.3; Python 3.11's os module lacks it
F_SEAL_FUTURE_WRITE: "Final" = 0x0010  # Linux >= 5.1; Python 3.11's fcntl lacks it
FIXED_SIZE_SEALS: "Final" = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
FREEZE_SEALS: "Final" = F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL
# Either seal refuses new writes; F_SEAL_SEAL alone (every tmpfs file has it) does not.
WRITE_SEALS: "Final" = F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_WRITE
_MEMFD_PREFIX: "Final" = "/memfd:"
_DELETED_SUFFIX: "Final" = " (deleted)"
# O_EXCL: the file can never be linked into the filesystem afterwards.
TMPFILE_FLAGS: "Final" = os.O_TMPFILE | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC
_NAMED_TRIES: "Final" = 20  # NSPR's own bound on the names it tries

# Cleared the first time the kernel refuses MFD_NOEXEC_SEAL (EINVAL before 6.3).
_memfd_flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL


def create(pending: list[int], name: str, size: int, directory: str | None, reserve: bool) -> None:
    """Append a new read-write descriptor of ``size`` zero bytes, that no path leads to.

    It goes into the caller's ``pending`` the moment it exists, and stays there, the
    caller's to close, whether this returns or raises.
    """
    if directory is None:
        _memfd(pending, name)
    else:
        _tmpfile(pending, directory)
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
        pending.append(os.memfd_create(name, _memfd_flags))
    except OSError as exc:
        if exc.errno != errno.EINVAL or not _memfd_flags & MFD_NOEXEC_SEAL:
            raise
    else:
        return
    _memfd_flags &= ~MFD_NOEXEC_SEAL
    pending.append(os.memfd_create(name, _memfd_flags))


def _tmpfile(pending: list[int], directory: str) -> None:
    try:
        pending.append(os.open(directory, TMPFILE_FLAGS, 0o600))
    except OSError as exc:
        # EOPNOTSUPP: the filesystem lacks O_TMPFILE; EISDIR/EINVAL: the kernel does.
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    else:
        return
    _named_then_unlinked(pending, directory)


def _named_then_unlinked(pending: list[int], directory: str) -> None:
    # NSPR's strategy: the name exists only between open and unlink, mode 0600.
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_NAMED_TRIES):
        path = os.path.join(directory, f".anonshm-{os.urandom(12).hex()}")
        try:
            pending.append(os.open(path, flags, 0o600))
        except FileExistsError:
            continue
        os.unlink(path)
        return
    raise FileExistsError(errno.EEXIST, "no free name for a backing file", directory)


def seals(fd: int) -> int:
    """The seals of ``fd``'s file; 0 for files that cannot be sealed."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a memfd (a file on disk or tmpfs)
            return 0
        raise


def freeze(fd: int) -> None:
    """Seal ``fd``'s file against every new write; maps already writable keep working."""
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, FREEZE_SEALS)


def reopen_readonly(fd: int) -> int:
    """A new read-only descriptor of the open file behind ``fd``."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
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
    if not target.startswith(_MEMFD_PREFIX):
        return None
    return target[len(_MEMFD_PREFIX) :].removesuffix(_DELETED_SUFFIX)
