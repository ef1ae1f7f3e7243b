"""``python -m anonshm ps``: which processes hold which anonymous memories.

A process holds a memory while it has a descriptor of it (``/proc/<pid>/fd``) or a
mapping of it (``/proc/<pid>/maps``): a map outlives the descriptor it was made
from, so a memory whose every descriptor is closed is still alive, and listed.
Memories are told apart by their file's identity (device and inode), never by
name: two memories may carry the same label.

Only what ``/proc`` shows to this user is listed: processes that exit during the
scan, and those this user may not inspect, are skipped without a word.  Every
``memfd`` is listed, anonshm's or not: the kernel keeps nothing that tells them apart.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

assert sys.platform == "linux"  # for type checkers: Linux only (it reads /proc)

from . import _linux  # noqa: E402
from ._backend import backend  # noqa: E402
from ._errors import AnonShmError  # noqa: E402

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

__all__ = ["HeldMemory", "Holder", "main", "scan"]

_PROC: Final = "/proc"
# O_NONBLOCK | O_NOCTTY: should the number be reused for a FIFO or a tty between the
# readlink and the open, the open still returns at once and takes no terminal.
_PEEK_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

Identity = tuple[int, int]


@final
@dataclass(frozen=True)
class Holder:
    """One process that holds a memory, and how.

    Example:
        >>> Holder(pid=4242, command="python3", fds=(3,), maps=1).how
        'fd 3, 1 map'
    """

    pid: int
    command: str
    """The process's command name (``/proc/<pid>/comm``, at most 15 characters)."""
    fds: tuple[int, ...]
    """Its descriptors of the memory, ascending (empty: it holds only maps)."""
    maps: int
    """How many mapped ranges of the memory it has (0: it holds only descriptors)."""

    @property
    def how(self) -> str:
        """``"fd 3, 5, 2 maps"``: the descriptors and the number of mapped ranges."""
        parts = []
        if self.fds:
            parts.append("fd " + ", ".join(map(str, self.fds)))
        if self.maps:
            parts.append(f"{self.maps} map{'s' if self.maps > 1 else ''}")
        return ", ".join(parts)


@final
@dataclass(frozen=True)
class HeldMemory:
    """One anonymous memory (a ``memfd``) and every process seen holding it.

    ``size`` and ``frozen`` are ``None`` when no holder has a descriptor this user
    may open: a mapping alone reveals them only to a process with
    ``CAP_CHECKPOINT_RESTORE`` or ``CAP_SYS_ADMIN`` (root), through
    ``/proc/<pid>/map_files``.

    Example:
        >>> holder = Holder(pid=4242, command="python3", fds=(), maps=1)
        >>> held = HeldMemory("frame", 1, 5164, 4096, False, (holder,))
        >>> held.pids, held.identity
        ((4242,), (1, 5164))
    """

    name: str
    """The name given to ``memfd_create`` (the ``name=`` of an AnonymousMemory)."""
    device: int
    inode: int
    size: int | None
    frozen: bool | None
    """Whether the kernel refuses every new write (sealed ``F_SEAL_[FUTURE_]WRITE``)."""
    holders: tuple[Holder, ...]
    """The processes that hold it, by ascending pid."""

    @property
    def identity(self) -> Identity:
        """``(device, inode)``: what tells two memories apart."""
        return self.device, self.inode

    @property
    def pids(self) -> tuple[int, ...]:
        """The process ids of the holders, ascending."""
        return tuple(holder.pid for holder in self.holders)


@dataclass
class _Found:
    name: str
    named_by_fd: bool
    size: int | None = None
    frozen: bool | None = None
    fds: dict[int, list[int]] = field(default_factory=dict)
    maps: dict[int, int] = field(default_factory=dict)

    def learn(self, peek: tuple[int, bool] | None) -> None:
        if peek is not None:
            self.size, self.frozen = peek


def scan(*, all_users: bool = False) -> list[HeldMemory]:
    """Every memory held by this user's processes (with ``all_users``, by any process).

    Args:
        all_users: also scan other users' processes; only those this user may inspect
            show up (all of them for root).

    Returns:
        The memories, sorted by name then identity, each with its holders.

    Raises:
        AnonShmError: the backend in use makes memories that are not memfds (posix).

    Example:
        >>> import os
        >>> from anonshm import AnonymousMemory
        >>> with AnonymousMemory(100, name="ps-scan-example") as mem:
        ...     [held] = [held for held in scan() if held.name == "ps-scan-example"]
        ...     held.size, held.frozen, held.pids == (os.getpid(),)
        (100, False, True)
    """
    if not backend.FEATURES.names:
        raise AnonShmError(
            f"ps lists memfd memories, which /proc names; the {backend.FEATURES.name} "
            "backend's memories have no name there, so ps would miss every one of them"
        )
    uid = os.getuid()
    found: dict[Identity, _Found] = {}
    for pid in _pids():
        if not all_users and _owner(pid) != uid:
            continue
        _scan_fds(pid, found)
        _scan_maps(pid, found)
    memories = []
    for (device, inode), item in found.items():
        pids = sorted(item.fds.keys() | item.maps.keys())
        holders = tuple(
            Holder(
                pid=pid,
                command=_command(pid),
                fds=tuple(sorted(item.fds.get(pid, ()))),
                maps=item.maps.get(pid, 0),
            )
            for pid in pids
        )
        memories.append(HeldMemory(item.name, device, inode, item.size, item.frozen, holders))
    memories.sort(key=lambda held: (held.name, held.identity))
    return memories


def _pids() -> Iterator[int]:
    for entry in os.listdir(_PROC):
        if entry.isdigit():
            yield int(entry)


def _owner(pid: int) -> int | None:
    """The real user id of process ``pid``, or None if it is gone."""
    # Not the owner of /proc/<pid>: that is root for any process that is not
    # dumpable, e.g. one that dropped privileges with setuid().
    try:
        with open(f"{_PROC}/{pid}/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _command(pid: int) -> str:
    try:
        with open(f"{_PROC}/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().rstrip("\n")
    except OSError:
        return "?"


def _peek(path: str, identity: Identity) -> tuple[int, bool] | None:
    """``(size, frozen)`` of the memory at ``path``, if it is still that memory."""
    # O_PATH first: it opens nothing (no device's open() runs), so the identity can be
    # checked before a real open of a file that may have replaced the memory.
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:  # exited, closed, or not ours to open
        return None
    try:
        st = os.fstat(handle)
        if (st.st_dev, st.st_ino) != identity:
            return None  # the number now names another file
        fd = os.open(f"/proc/self/fd/{handle}", _PEEK_FLAGS)
    except OSError:
        return None
    finally:
        os.close(handle)
    try:
        return st.st_size, bool(_linux.seals(fd) & _linux.WRITE_SEALS)
    except OSError:
        return None
    finally:
        os.close(fd)


def _scan_fds(pid: int, found: dict[Identity, _Found]) -> None:
    directory = f"{_PROC}/{pid}/fd"
    try:
        entries = os.listdir(directory)
    except OSError:  # exited, a zombie, or another user's
        return
    for entry in entries:
        path = f"{directory}/{entry}"
        try:
            name = _linux.memfd_name(os.readlink(path))
            if name is None:
                continue
            st = os.stat(path)
        except OSError:  # closed meanwhile
            continue
        identity = (st.st_dev, st.st_ino)
        item = found.get(identity)
        if item is None:
            item = found[identity] = _Found(name, named_by_fd=True)
        elif not item.named_by_fd:
            # /proc/<pid>/maps escapes some characters of a name; the link does not.
            item.name, item.named_by_fd = name, True
        item.size = st.st_size
        if item.frozen is None:
            item.learn(_peek(path, identity))
        item.fds.setdefault(pid, []).append(int(entry))


def _scan_maps(pid: int, found: dict[Identity, _Found]) -> None:
    try:
        with open(f"{_PROC}/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return
    for line in lines:
        # start-end perms offset major:minor inode path (the path may hold spaces)
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        name = _linux.memfd_name(fields[5])
        if name is None:
            continue
        try:
            major, minor = (int(number, 16) for number in fields[3].split(":"))
            identity = (os.makedev(major, minor), int(fields[4]))
            start, end = (int(address, 16) for address in fields[0].split("-"))
        except ValueError:
            continue
        item = found.get(identity)
        if item is None:
            item = found[identity] = _Found(name, named_by_fd=False)
        if item.frozen is None:
            # map_files names are unpadded; only a privileged reader may open them.
            item.learn(_peek(f"{_PROC}/{pid}/map_files/{start:x}-{end:x}", identity))
        item.maps[pid] = item.maps.get(pid, 0) + 1


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)[1:-1]


def _table(memories: list[HeldMemory]) -> list[str]:
    header = ("NAME", "SIZE", "FROZEN", "INODE", "HOLDERS (pid command: how)")
    rows = [
        (
            _printable(held.name),
            "?" if held.size is None else str(held.size),
            "?" if held.frozen is None else ("yes" if held.frozen else "no"),
            str(held.inode),
            "; ".join(
                f"{holder.pid} {_printable(holder.command)}: {holder.how}"
                for holder in held.holders
            ),
        )
        for held in memories
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(4)]
    lines = []
    for name, size, frozen, inode, holders in [header, *rows]:
        lines.append(
            f"{name:<{widths[0]}}  {size:>{widths[1]}}  {frozen:<{widths[2]}}  "
            f"{inode:>{widths[3]}}  {holders}"
        )
    return lines


def _summary(memories: int, processes: int, whose: str) -> str:
    """``"2 memories held by 1 of this user's processes"``, in the right number."""
    return f"{memories} {'memory' if memories == 1 else 'memories'} held by {processes} of {whose}"


def main(args: argparse.Namespace) -> int:
    """Print the anonymous memories held by this user's processes (``--all``: anyone's)."""
    memories = scan(all_users=args.all)
    whose = "processes this user may inspect" if args.all else "this user's processes"
    if memories:
        pids = {pid for held in memories for pid in held.pids}
        lines = [*_table(memories), _summary(len(memories), len(pids), whose)]
    else:
        lines = [f"no anonymous memory (memfd) is held by {whose}"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
