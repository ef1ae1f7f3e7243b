"""The POSIX backend: the path macOS and the BSDs take (and Linux, when asked).

A memory is a POSIX shared memory object with a random name of at most 30 bytes
(macOS allows 31, ``PSHMNAMLEN``), opened ``O_CREAT | O_EXCL`` with mode 0600; a
read-only twin is opened by the same name, and the name is unlinked at once, so it
exists for those two system calls, as in NSPR.  The handle keeps the twin: the only
way to make a read-only descriptor later where there is no ``/proc`` to reopen through.
``ftruncate`` runs once, on the new object (macOS allows no second one).  The twin must
be the object just made (``_unix.check_twin``), and the name goes whatever line an
exception lands on: one left behind would last until reboot.  macOS maps a shared
memory object ``MAP_SHARED`` only: a ``READ_ONLY`` map is a shared one there, and
``WRITE_COPY`` is refused (``EINVAL``).

There are no seals: the kernel does not keep another holder from resizing the memory
(``fixed_size`` is False, and ``receive()`` asks ``allow_resizable=True``), and a
memory cannot be frozen.  A read-write descriptor that this process did not create (a
token, an inheritance, a socket) cannot be made read-only: a READ_ONLY import of one
maps read-only, but hands on the read-write descriptor it holds.
"""

import _posixshmem  # type: ignore[import-not-found]  # CPython's, for shared_memory
import errno
import os
import stat
import sys

assert sys.platform != "win32"  # for type checkers: POSIX only (they skip the rest elsewhere)

from . import _unix  # noqa: E402
from ._backend import Features, Inspected, take  # noqa: E402
from ._errors import AnonShmError  # noqa: E402
from ._unix import (  # noqa: E402
    backing_file,
    check_twin,
    child_duplicate,
    close,
    duplicate,
    flush,
    inspect_fd,
    pass_to_child,
    read_at,
    unlink_all,
    unmap,
    write_at,
)
from ._wire import READ_WRITE, WRITE_COPY, format_token, parse_token  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from typing import Final

_shm_open: "Callable[[str, int, int], int]" = _posixshmem.shm_open
_shm_unlink: "Callable[[str], None]" = _posixshmem.shm_unlink

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
    "posix",
    "shm_open of a random name, unlinked at once",
    fixed_size=False,
    freeze=False,
    read_only="a twin opened by name before the unlink, kept by the handle",
    sockets=True,
    names=False,
)
TWIN: "Final" = True
NAME_PREFIX: "Final" = "/anonshm."  # then 20 hex digits: 29 bytes, within macOS's 30
_TRIES: "Final" = 20  # as NSPR's backing files


def create(pending: list[int], name: str, size: int, directory: str | None, reserve: bool) -> None:
    """Append a read-write descriptor of ``size`` zero bytes, then its read-only twin.

    Both go into the caller's ``pending`` the moment they exist.
    """
    if directory is not None:
        backing_file(pending, directory, twin=True)
    else:
        _shm(pending)
    fd = pending[-2]
    os.ftruncate(fd, size)  # once: macOS refuses to resize a shared memory object again
    if reserve:
        _reserve(fd, size, directory)


def _shm(pending: list[int]) -> None:
    for _ in range(_TRIES):
        names = [NAME_PREFIX + os.urandom(10).hex()]
        made = len(pending)
        try:
            take(pending, _shm_open, names[0], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            take(pending, _shm_open, names[0], os.O_RDONLY, 0)
            check_twin(pending, names[0])
            unlink_all(names, _shm_unlink)  # the name exists for these two opens only
        except FileExistsError:
            if len(pending) == made:
                names.clear()  # another object's name: not ours to unlink
                continue
            raise
        finally:
            # Interrupted (Ctrl-C) before the unlink: the name goes all the same; unlike
            # a descriptor, it would outlive the process.
            if len(pending) > made:
                unlink_all(names, _shm_unlink)
        return
    raise FileExistsError(errno.EEXIST, "no free name for a shared memory object")


def _reserve(fd: int, size: int, directory: str | None) -> None:
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        # macOS has no posix_fallocate: refuse rather than pretend to have reserved.
        raise AnonShmError("reserve=True needs posix_fallocate, which this platform lacks")
    if sys.platform == "linux":
        from . import _limits  # noqa: PLC0415 - read only by reserve=True

        # Linux keeps shared memory objects in the tmpfs at /dev/shm, bound by its size.
        _limits.check(fd, size, directory if directory is not None else "/dev/shm")  # noqa: S108
    allocate(fd, 0, size)


def map(
    fd: int, offset: int, length: int, protection: int, *, populate: bool, hugepages: bool
) -> "tuple[mmap.mmap, memoryview]":
    """Map the window; where only shared maps can be made, a read-only map is one.

    macOS maps a shared memory object ``MAP_SHARED`` or not at all (``EINVAL``): a
    ``READ_ONLY`` map is a shared one there, which a holder of a read-write descriptor
    could ``mprotect`` writable, and ``WRITE_COPY`` cannot be had.
    """
    shared = protection != READ_WRITE and _private_maps_refused(fd)
    if shared and protection == WRITE_COPY:
        raise OSError(
            errno.EINVAL,
            "cannot map WRITE_COPY: this kernel maps a shared memory object MAP_SHARED only, "
            "never copy-on-write",
        )
    return _unix.map(
        fd, offset, length, protection, populate=populate, hugepages=hugepages, shared=shared
    )


def _private_maps_refused(fd: int) -> bool:
    # XNU's pshm_mmap: EINVAL for any map without MAP_SHARED.  Its fstat of a shared
    # memory object gives no file type bits (a directory= file is a regular file).
    return sys.platform == "darwin" and stat.S_IFMT(os.fstat(fd).st_mode) == 0


def inspect(fd: int) -> Inspected:
    """What ``fd`` is: nothing here keeps its size fixed or its pages from being written."""
    return inspect_fd(fd, fixed_size=False, frozen=False, revocable=False)


def freeze(fd: int) -> None:
    """Refused: without seals, nothing would keep another holder from writing."""
    raise AnonShmError(
        "the posix backend cannot freeze memory: this platform has no seals, so no "
        "kernel would keep the other holders from writing"
    )


def readonly(pending: list[int], fd: int, twin: int) -> None:
    """Append a read-only descriptor: a duplicate of the twin; without one, of ``fd``."""
    take(pending, os.dup, twin if twin >= 0 else fd)


def kernel_name(fd: int) -> str | None:
    """None: a shared memory object's name is gone once unlinked."""
    return None
