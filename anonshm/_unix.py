"""What the two POSIX backends share: descriptors, fstat, and mmap.

``_linux`` (memfd) and ``_posix`` (``shm_open``, the macOS and BSD path) differ in how
they make a memory, seal it and reopen it read-only; everything else is plain POSIX
and lives here.
"""

import errno
import fcntl
import mmap
import os
import stat
import sys

assert sys.platform != "win32"  # for type checkers: POSIX only (they skip the rest elsewhere)

from ._backend import Inspected, take  # noqa: E402
from ._wire import WRITE_COPY  # noqa: E402

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

__all__ = [
    "MMAP_ARGS",
    "TMPFILE_FLAGS",
    "backing_file",
    "check_twin",
    "child_duplicate",
    "close",
    "duplicate",
    "flush",
    "inspect_fd",
    "map",
    "pass_to_child",
    "read_at",
    "unlink_all",
    "unmap",
    "write_at",
]

# The mmap flags and page protection NSPR uses, indexed by protection (0, 1, 2).
MMAP_ARGS: "Final" = (
    (mmap.MAP_PRIVATE, mmap.PROT_READ),
    (mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE),
    (mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE),
)
_POPULATE: "Final[int]" = getattr(mmap, "MAP_POPULATE", 0)  # Linux only
_HUGEPAGE: "Final[int]" = getattr(mmap, "MADV_HUGEPAGE", 0)  # Linux only
_WILLNEED: "Final[int]" = getattr(mmap, "MADV_WILLNEED", 0)
# Offsets must be multiples of this (16 KiB on Apple silicon: never assume 4096).
_GRANULARITY: "Final" = mmap.ALLOCATIONGRANULARITY
_KINDS: "Final" = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)

# O_EXCL: the file can never be linked into the filesystem afterwards (Linux only).
TMPFILE_FLAGS: "Final" = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC
_NAMED_FLAGS: "Final" = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NAMED_TRIES: "Final" = 20  # NSPR's own bound on the names it tries

close = os.close
_each = map  # the built-in: this module defines a map() of its own below


def duplicate(pending: list[int], fd: int) -> None:
    """Append a close-on-exec duplicate of ``fd``."""
    take(pending, os.dup, fd)


def backing_file(pending: list[int], directory: str, *, twin: bool) -> None:
    """NSPR's file strategy: append a read-write descriptor of a file nobody can open.

    ``O_TMPFILE`` where there is one and no ``twin`` is wanted: the file never has a
    name.  Else an exclusive random name, mode 0600, unlinked at once; with ``twin``, a
    read-only descriptor is opened by that name before the unlink and appended too.
    """
    if not twin and TMPFILE_FLAGS & ~(os.O_RDWR | os.O_EXCL | os.O_CLOEXEC):
        try:
            take(pending, os.open, directory, TMPFILE_FLAGS, 0o600)
        except OSError as exc:
            # EOPNOTSUPP: the filesystem lacks O_TMPFILE; EISDIR/EINVAL: the kernel does.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        else:
            return
    for _ in range(_NAMED_TRIES):
        names = [os.path.join(directory, f".anonshm-{os.urandom(12).hex()}")]
        made = len(pending)
        try:
            take(pending, os.open, names[0], _NAMED_FLAGS, 0o600)
            if twin:
                take(pending, os.open, names[0], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                check_twin(pending, names[0])
            unlink_all(names)  # the name exists for these few calls only
        except FileExistsError:
            if len(pending) == made:
                names.clear()  # another file's name: not ours to unlink
                continue
            raise
        finally:
            if len(pending) > made:  # interrupted before the unlink: the name goes anyway
                unlink_all(names)
        return
    raise FileExistsError(errno.EEXIST, "no free name for a backing file", directory)


def unlink_all(names: list[str], unlink: "Callable[[str], None]" = os.unlink) -> None:
    """Unlink every name in ``names`` (which ends empty), each taken out as it goes.

    Within one C call each, as ``_holder.close_all`` closes descriptors: an interrupt
    leaves a name either listed or unlinked.  One that is gone already is no error.
    """
    try:
        any(_each(unlink, _each(names.pop, [-1] * len(names))))
    except FileNotFoundError:
        unlink_all(names, unlink)  # the rest


def check_twin(pending: list[int], path: str) -> None:
    """Refuse a read-only twin (``pending[-1]``) that is not the file just made.

    Between the two opens, a process that may write to the directory can unlink or
    rename the name and put a file of its own there: the twin, which every read-only
    handle of the memory shares, would show that file instead.  (macOS reports no
    device or inode for a shared memory object, only zeros: there the check cannot
    tell, and what keeps others off is the name, random and never listed.)
    """
    made, twin = os.fstat(pending[-2]), os.fstat(pending[-1])
    if (made.st_dev, made.st_ino) != (twin.st_dev, twin.st_ino):
        raise FileExistsError(
            errno.EEXIST, "another file took the name before the read-only twin was opened", path
        )


def inspect_fd(fd: int, *, fixed_size: bool, frozen: bool, revocable: bool) -> Inspected:
    """What ``fd`` is, with what the backend's seals say about it."""
    st = os.fstat(fd)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    mode = st.st_mode
    kind = None
    # macOS reports a POSIX shared memory object with no file type bits at all.
    if not stat.S_ISREG(mode) and stat.S_IFMT(mode) != 0:
        kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
    access = flags & os.O_ACCMODE
    if flags & getattr(os, "O_PATH", 0):
        how = "path"
    else:
        how = {os.O_RDONLY: "r", os.O_WRONLY: "w"}.get(access, "rw")
    return Inspected(
        kind,
        named=st.st_nlink > 0,
        size=st.st_size,
        access=how,
        fixed_size=fixed_size,
        frozen=frozen,
        revocable=revocable and st.st_blksize > mmap.PAGESIZE,
    )


def map(
    fd: int,
    offset: int,
    length: int,
    protection: int,
    *,
    populate: bool,
    hugepages: bool,
    shared: bool = False,
) -> tuple[mmap.mmap, memoryview]:
    """Map the window; the mmap object and a memoryview of exactly the window.

    ``shared``: a read-only map with ``MAP_SHARED`` instead of NSPR's ``MAP_PRIVATE``
    (where the kernel maps the file no other way).
    """
    # mmap offsets must be page-aligned: map from the page start, then slice.
    skew = offset % _GRANULARITY
    flags, prot = MMAP_ARGS[protection]
    if shared:
        flags = mmap.MAP_SHARED
    if not (populate or hugepages):  # the common case, in the fewest steps
        mm = _mmap(fd, length + skew, flags, prot, offset - skew)
    else:
        # MAP_POPULATE write-faults a private writable map: a copy of every page.
        # Such a map is only read ahead instead.
        private_copy = protection == WRITE_COPY
        if populate and not private_copy:
            flags |= _POPULATE
        mm = _mmap(fd, length + skew, flags, prot, offset - skew)
        try:
            if populate and (private_copy or not _POPULATE):
                _advise(mm, _WILLNEED)
            if hugepages:
                # Only a hint: shmem uses huge pages only if shmem_enabled allows it.
                _advise(mm, _HUGEPAGE)
        except BaseException:
            mm.close()  # not left mapped until the traceback lets go of this frame
            raise
    buf = memoryview(mm)
    if skew:
        whole, buf = buf, buf[skew:]
        whole.release()
    return mm, buf


def _mmap(fd: int, length: int, flags: int, prot: int, offset: int) -> mmap.mmap:
    # Python < 3.13 keeps a duplicate of the descriptor in every mmap object (for size()
    # and resize(), which a MemoryMap never calls); from 3.13 on a map costs none.
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, length, flags, prot, offset=offset, trackfd=False)
    return mmap.mmap(fd, length, flags, prot, offset=offset)


def unmap(mapping: object, buf: memoryview) -> None:
    """Release ``buf`` and unmap, unless views made from it live: then the last one does."""
    # A view made from ``buf`` (a slice, a numpy array) keeps the pages: releasing or
    # closing raises BufferError then, and the mmap goes with the last such view.
    assert isinstance(mapping, mmap.mmap)  # what map() returned
    try:
        buf.release()
        mapping.close()
    except BufferError:
        pass


def flush(mapping: object) -> None:
    """Write a map's pages back to its file (``msync``; nothing to do for memory)."""
    assert isinstance(mapping, mmap.mmap)  # what map() returned
    mapping.flush()


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` (bytes, C-contiguous) at ``offset``, through the kernel.

    ``pwrite`` may write less than asked (Linux caps one call at 2 GiB - 4 KiB): the
    rest is written on.  The caller has checked that it ends within the memory.
    """
    done = 0
    length = len(data)
    while done < length:
        written = os.pwrite(fd, data[done:], offset + done)
        if written == 0:  # never for memory within its size; a loop for ever otherwise
            raise OSError(errno.EIO, f"pwrite wrote nothing at offset {offset + done}")
        done += written


def read_at(fd: int, length: int, offset: int) -> bytes:
    """Read exactly ``length`` bytes from ``offset``, through the kernel.

    ``pread`` may return less than asked (the same cap as ``pwrite``): the rest is read
    on.  Fewer bytes can only mean that the file is shorter than the caller knows it to
    be: another holder of an unsealed memory truncated it.
    """
    data = os.pread(fd, length, offset)
    if len(data) == length:  # the common case: one call, no copy
        return data
    chunks = [data]
    have = len(data)
    while have < length:
        chunk = os.pread(fd, length - have, offset + have)
        if not chunk:
            raise OSError(
                errno.EIO,
                f"the memory ends at {offset + have} bytes, before the {offset + length} it "
                "has: another holder truncated it",
            )
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _advise(mm: mmap.mmap, advice: int) -> None:
    # EINVAL: a kernel built without that advice (no transparent huge pages).
    if not advice:
        return
    try:
        mm.madvise(advice)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


# How a child gets a descriptor: a close-on-exec duplicate, made inheritable between
# fork and exec for that child alone (pass_fds), at the same number.
def child_duplicate(pending: list[int], fd: int) -> None:
    """Append a close-on-exec duplicate of ``fd``; ``pass_fds`` hands it to one child."""
    take(pending, os.dup, fd)


def pass_to_child(options: "dict[str, Any]", fds: list[int]) -> None:
    """Give a child exactly ``fds`` (at the same numbers), through ``pass_fds``."""
    if options.get("close_fds") is False:
        raise ValueError("spawn passes memories with pass_fds, which needs close_fds=True")
    options["pass_fds"] = (*options.get("pass_fds", ()), *fds)
