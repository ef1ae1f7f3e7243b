"""What memory and space ``reserve=True`` can still get, checked before it allocates.

``posix_fallocate`` on a memfd or a tmpfs file takes its pages from memory (shmem: held
in RAM or swap, charged to the memory cgroup), and running out of memory is not an
``ENOMEM`` from it: the kernel reclaims, swaps, and then sends the OOM killer -- to this
process at a memory cgroup's limit, to whichever process it picks when the machine runs
out.  :func:`check` runs just before the allocation, with the size it will ask, and
refuses what the limits this process can read say cannot fit:

1. ``directory=``: the free space of the file's filesystem (``fstatvfs``: a disk's free
   blocks, a tmpfs's ``size=``), ``ENOSPC``.  A file on a disk filesystem needs nothing
   more (its blocks take no memory); only tmpfs and ramfs files go on to the memory
   checks, as memfds do.
2. ``vm.overcommit_memory`` = 2: ``CommitLimit - Committed_AS`` (``/proc/meminfo``),
   which the kernel also charges shmem pages to.
3. The machine: ``MemAvailable + SwapFree`` (``/proc/meminfo``).
4. Each memory cgroup of this process, v1 and v2, and each of its ancestors up to the
   cgroup filesystem's mount: the kill limit (``memory.max``, ``memory.limit_in_bytes``)
   minus the usage, plus the file cache it can reclaim (``memory.stat``), plus the swap
   it may still fill (``memory.swap.max``, ``memory.memsw.limit_in_bytes``, at most
   ``SwapFree``).  ``memory.high`` is no limit here: above it the kernel throttles and
   reclaims, it never kills.

A refusal is ``OSError(errno.ENOSPC or errno.ENOMEM, message, filename)``: the first limit
that refuses, in that order; ``filename`` is the file holding it (the directory for
``ENOSPC``) and the message gives its value, the usage and what was asked.

A best effort, generous where unsure.  It turns the common case, asking clearly more than
there is, into an exception instead of a kill; it refuses only what a limit it read says
cannot fit, and a file it cannot read or parse (no ``/proc``, no cgroup filesystem) is no
limit known, never an error.  What it cannot promise:

- It is racy: another process (or thread) may allocate between the check and the
  allocation.  Then ``reserve`` ends as it did without the check: an ``OSError`` from the
  kernel under strict overcommit or on a full filesystem, the OOM killer at a cgroup's
  limit or on a machine that runs out.
- It estimates: file cache may be dirty or pinned, swap may be refused (``swappiness``
  0), ``MemAvailable`` is the kernel's own guess.  Asking close to the edge can still end
  in the OOM killer.
- It sees what this process sees: not a cgroup above its cgroup namespace, a
  hypervisor's balloon, or the tmpfs under an overlayfs (checked as a disk).
"""

import errno
import os
import sys

assert sys.platform == "linux"  # for type checkers: Linux only: it reads /proc and cgroups

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Final

__all__ = ["check"]

MEMINFO: "Final" = "/proc/meminfo"
_OVERCOMMIT: "Final" = "/proc/sys/vm/overcommit_memory"
_OVERCOMMIT_NEVER: "Final" = 2  # strict accounting: the kernel refuses past CommitLimit
_CGROUPS: "Final" = "/proc/self/cgroup"
_MOUNTINFO: "Final" = "/proc/self/mountinfo"
_SHMEM_FILESYSTEMS: "Final" = ("tmpfs", "ramfs")
_UNITS: "Final" = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def check(fd: int, size: int, directory: str | None) -> None:
    """Refuse ``size`` bytes for ``fd``'s new file if a limit in sight lacks them.

    Args:
        fd: the new, still empty file (``ftruncate`` allocates nothing).
        size: the bytes that ``posix_fallocate`` is about to allocate.
        directory: the ``directory=`` the file was made in; None for a memfd.

    Raises:
        OSError: ``ENOSPC`` naming the directory, or ``ENOMEM`` naming the file of the
            memory limit that refused.
    """
    device = None
    if directory is not None:
        _check_filesystem(fd, size, directory)
        st_dev = os.fstat(fd).st_dev
        device = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    mounts = _mounts(device)
    if device is not None and not any(
        mount[0] == device and mount[3] in _SHMEM_FILESYSTEMS for mount in mounts
    ):
        return  # a disk's blocks: its free space was all there is to check
    meminfo = _meminfo()
    _check_machine(size, meminfo)
    swap_free = meminfo.get("SwapFree")
    for version, path, ancestor in _memory_cgroups(mounts):
        if version == 2:
            _check_cgroup2(size, path, swap_free)
        else:
            _check_cgroup1(size, path, swap_free, ancestor=ancestor)


def _check_filesystem(fd: int, size: int, directory: str) -> None:
    try:
        st = os.fstatvfs(fd)
    except OSError:  # no size known, like an unreadable file
        return
    if st.f_blocks == 0:  # ramfs, and filesystems that count no blocks: no size known
        return
    # Root may use the blocks kept back from others (ext4's reserved blocks).
    field, blocks = ("f_bfree", st.f_bfree) if os.geteuid() == 0 else ("f_bavail", st.f_bavail)
    free = blocks * st.f_frsize
    if size > free:
        raise _refusal(
            errno.ENOSPC,
            size,
            free,
            what=f"the filesystem of {directory}",
            detail=f"fstatvfs gives {field} {blocks} blocks of {st.f_frsize} bytes",
            filename=directory,
        )


def _check_machine(size: int, meminfo: dict[str, int]) -> None:
    limit, committed = meminfo.get("CommitLimit"), meminfo.get("Committed_AS")
    if (
        limit is not None
        and committed is not None
        and size > limit - committed
        and _read_int(_OVERCOMMIT) == _OVERCOMMIT_NEVER  # read only when it matters
    ):
        what = "strict overcommit (vm.overcommit_memory = 2)"
        detail = f"CommitLimit is {_amount(limit)}, Committed_AS {_amount(committed)}"
        raise _refusal(
            errno.ENOMEM, size, limit - committed, what=what, detail=detail, filename=MEMINFO
        )
    available = meminfo.get("MemAvailable")
    if available is None:  # Linux < 3.14
        return
    swap = meminfo.get("SwapFree", 0)
    if size > available + swap:
        detail = f"MemAvailable is {_amount(available)}, SwapFree {_amount(swap)}"
        raise _refusal(
            errno.ENOMEM,
            size,
            available + swap,
            what="this machine",
            detail=detail,
            filename=MEMINFO,
        )


def _check_cgroup2(size: int, path: str, swap_free: int | None) -> None:
    limit = _read_int(f"{path}/memory.max")  # "max" (no limit) reads as None too
    if limit is None:
        return
    usage = _read_int(f"{path}/memory.current") or 0
    if size <= limit - usage:  # the common case: two small files and done
        return
    stat = _stat(f"{path}/memory.stat")
    cache = stat.get("active_file", 0) + stat.get("inactive_file", 0)
    swap = _swap_room(
        swap_free, _read_int(f"{path}/memory.swap.max"), _read_int(f"{path}/memory.swap.current")
    )
    if swap is None:
        return
    room = limit - usage + cache + swap
    if size > room:
        detail = _cgroup_detail("memory.max", limit, "memory.current", usage, cache)
        raise _refusal(
            errno.ENOMEM,
            size,
            room,
            what=f"the memory cgroup {path}",
            detail=f"{detail}, swap it may fill {_amount(swap)}",
            filename=f"{path}/memory.max",
        )


def _check_cgroup1(size: int, path: str, swap_free: int | None, *, ancestor: bool) -> None:
    limit = _read_int(f"{path}/memory.limit_in_bytes")
    if limit is None:
        return
    usage = _read_int(f"{path}/memory.usage_in_bytes") or 0
    if size <= limit - usage:
        return
    stat = _stat(f"{path}/memory.stat")  # total_*: this cgroup and its children, as usage
    cache = stat.get("total_active_file", 0) + stat.get("total_inactive_file", 0)
    name = "memory.limit_in_bytes"
    room = None if swap_free is None else limit - usage + cache + swap_free
    detail = _cgroup_detail(name, limit, "memory.usage_in_bytes", usage, cache)
    detail += f", swap free {_amount(swap_free or 0)}"
    # memsw: memory and swap together, where the kernel accounts swap (swapaccount=1).
    memsw = _read_int(f"{path}/memory.memsw.limit_in_bytes")
    if memsw is not None:
        memsw_usage = _read_int(f"{path}/memory.memsw.usage_in_bytes") or 0
        if room is None or memsw - memsw_usage + cache < room:
            room = memsw - memsw_usage + cache
            name = "memory.memsw.limit_in_bytes"
            detail = _cgroup_detail(
                f"{name} (memory and swap)",
                memsw,
                "memory.memsw.usage_in_bytes",
                memsw_usage,
                cache,
            )
    # Linux < 5.11 let a v1 cgroup keep its children's charges out (use_hierarchy 0).
    if ancestor and _read_int(f"{path}/memory.use_hierarchy") == 0:
        return
    if room is not None and size > room:
        raise _refusal(
            errno.ENOMEM,
            size,
            room,
            what=f"the memory cgroup {path}",
            detail=detail,
            filename=f"{path}/{name}",
        )


def _swap_room(swap_free: int | None, limit: int | None, usage: int | None) -> int | None:
    """The swap a v2 cgroup may still fill; None when no bound is known."""
    room = None if limit is None else max(limit - (usage or 0), 0)
    if swap_free is None:
        return room
    return swap_free if room is None else min(room, swap_free)


def _cgroup_detail(limit_name: str, limit: int, usage_name: str, usage: int, cache: int) -> str:
    return (
        f"{limit_name} is {_amount(limit)}, {usage_name} {_amount(usage)},"
        f" reclaimable file cache {_amount(cache)}"
    )


def _refusal(code: int, size: int, room: int, *, what: str, detail: str, filename: str) -> OSError:
    message = (
        f"reserve=True asked for {_amount(size)}, but {what} leaves"
        f" {_amount(max(room, 0))}: {detail}"
    )
    return OSError(code, message, filename)


def _amount(n: int) -> str:
    if abs(n) < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.4g} {unit} ({n} bytes)"


def _memory_cgroups(
    mounts: list[tuple[str, str, str, str, str]],
) -> "Iterator[tuple[int, str, bool]]":
    """(version, directory, whether an ancestor) of this process's memory cgroups.

    Each hierarchy's from this process's own cgroup up to the mount, innermost first.
    """
    v1 = v2 = None
    for line in (_read(_CGROUPS) or "").splitlines():
        # "hierarchy-id:controllers:path"; v2's line is "0::path".
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    seen = set()
    for device, root, point, fstype, options in mounts:
        if fstype == "cgroup2" and v2 is not None:
            version, path = 2, v2
        elif fstype == "cgroup" and v1 is not None and "memory" in options.split(","):
            version, path = 1, v1
        else:
            continue
        leaf = _inside(point, root, path)
        if leaf is None or device in seen:  # one hierarchy mounted twice: check it once
            continue
        seen.add(device)
        cgroup, ancestor = leaf, False
        while True:
            yield version, cgroup, ancestor
            if len(cgroup) <= len(point):
                break
            cgroup, ancestor = os.path.dirname(cgroup), True


def _inside(point: str, root: str, path: str) -> str | None:
    """Where cgroup ``path`` is under a mount of its hierarchy's ``root`` at ``point``."""
    if not path.startswith("/") or ".." in path.split("/"):
        return None  # outside this cgroup namespace: invisible here
    if root != "/":
        if path != root and not path.startswith(root + "/"):
            return None  # this mount shows another part of the hierarchy
        path = path[len(root) :]
    return point.rstrip("/") + path.rstrip("/") or "/"


def _mounts(device: str | None) -> list[tuple[str, str, str, str, str]]:
    """(major:minor, root, mount point, type, super options) of the mounts in sight.

    Only the cgroup mounts and those of ``device`` ("major:minor"), when it is given.
    """
    mounts = []
    for line in (_read(_MOUNTINFO) or "").splitlines():
        # id parent major:minor root point options [optional...] - type source super-options
        if " - cgroup" not in line and (device is None or f" {device} " not in line):
            continue  # only the cgroup mounts and the file's are looked at
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) > dash + 3:
            root, point = _unescape(fields[3]), _unescape(fields[4])
            mounts.append((fields[2], root, point, fields[dash + 1], fields[dash + 3]))
    return mounts


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo.
    head, *parts = field.split("\\")
    out = [head]
    for part in parts:
        code = part[:3]
        if len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)) + part[3:])
        else:
            out.append("\\" + part)
    return "".join(out)


def _meminfo() -> dict[str, int]:
    """The ``kB`` lines of /proc/meminfo, in bytes."""
    info = {}
    for line in (_read(MEMINFO) or "").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            info[key] = int(fields[0]) * 1024
    return info


def _stat(path: str) -> dict[str, int]:
    stat = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.isdigit():
            stat[key] = int(value)
    return stat


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:  # "max", or a format this code does not know
        return None


def _read(path: str) -> str | None:
    """The file's text; None where it cannot be read (no /proc, no such cgroup file)."""
    # os.read rather than open(): a fifth of the cost for these small files.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return os.fsdecode(b"".join(chunks))  # surrogateescape: mount points are bytes
