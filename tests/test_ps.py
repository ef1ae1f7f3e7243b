"""``python -m anonshm ps``: which processes hold which memories, by descriptor or map."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonShmError, AnonymousMemory, spawn
from anonshm._cli import main as cli_main
from anonshm._ps import HeldMemory, Holder, _summary, scan
from tests.conftest import (
    FEATURES,
    PS_REFUSAL,
    child_env,
    mapping_lines,
    python_child,
    run_child,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anonshm import SharedChild

# The child keeps one memory by a mapping alone.  Python's own mmap keeps a duplicate
# of the descriptor, so the child maps with libc through ctypes and closes the number.
_HOLDER = """
    import ctypes, mmap, os, sys

    name, size = sys.argv[1], int(sys.argv[2])
    fields = os.environ["NSPR_INHERIT_FDS"].split(":")
    inherited = {fields[i]: int(fields[i + 2], 16) for i in range(0, len(fields), 3)}
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, inherited[name], 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    os.close(inherited[name])
    print("ready", flush=True)
    sys.stdin.read()
"""


class Scene:
    """Memories held in known ways by this process and by one child."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.tag = f"ps-{uuid.uuid4().hex[:12]}"
        self.mine = stack.enter_context(AnonymousMemory(4096, name=f"{self.tag}-parent"))
        self.view = stack.enter_context(self.mine.map())
        self.shared = stack.enter_context(AnonymousMemory(1000, name=f"{self.tag}-fd"))
        self.mapped = stack.enter_context(AnonymousMemory(5000, name=f"{self.tag}-map"))
        self.frozen = stack.enter_context(AnonymousMemory(3, name=f"{self.tag}-frozen"))
        self.frozen.freeze()
        argv = python_child(_HOLDER, self.mapped.name, str(self.mapped.size))
        self.child: SharedChild[str] = stack.enter_context(
            spawn(
                argv,
                inherit=[self.shared, self.mapped, self.frozen],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
        )
        assert self.child.stdout is not None
        assert self.child.stdout.readline() == "ready\n"
        self.mapped.close()  # from now on only the child's mapping holds it

    def mine_only(self, memories: list[HeldMemory]) -> dict[str, HeldMemory]:
        return {held.name: held for held in memories if held.name.startswith(self.tag)}

    def finish(self) -> None:
        out, _ = self.child.communicate(timeout=60)
        assert self.child.returncode == 0
        assert out == ""


@contextlib.contextmanager
def _scene() -> Iterator[Scene]:
    with contextlib.ExitStack() as stack:
        scene = Scene(stack)
        yield scene
        scene.finish()


def _refused() -> bool:
    """Where the kernel records no names (the posix backend), ps must say it cannot list
    this backend's memories; checked there, instead of what ps lists."""
    if FEATURES.names:
        return False
    with pytest.raises(AnonShmError, match=PS_REFUSAL):
        scan()
    with pytest.raises(AnonShmError, match=PS_REFUSAL):
        cli_main(["ps"])
    done = subprocess.run(
        [sys.executable, "-m", "anonshm", "ps"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert re.search(PS_REFUSAL, done.stderr), done.stderr
    return True


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as comm:
        return comm.read().strip()


def _map_files_open_to_us(needle: str) -> bool:
    """Whether this process may follow /proc/<pid>/map_files links (CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE): only then does a mapping alone reveal size and seals."""
    [line] = mapping_lines(needle)
    start, end = (int(address, 16) for address in line.split()[0].split("-"))
    try:
        os.stat(f"/proc/self/map_files/{start:x}-{end:x}")
    except PermissionError:
        return False
    return True


def test_scan_lists_exactly_the_held_memories_and_how_they_are_held() -> None:
    if _refused():
        return
    with _scene() as scene:
        me, child = os.getpid(), scene.child.pid
        found = scene.mine_only(scan())
        assert sorted(found) == sorted(
            f"{scene.tag}-{suffix}" for suffix in ("parent", "fd", "map", "frozen")
        )
        privileged = _map_files_open_to_us(f"memfd:{scene.tag}-parent")

        parent = found[f"{scene.tag}-parent"]
        st = os.fstat(scene.mine.fileno())
        assert parent.identity == (st.st_dev, st.st_ino)
        assert (parent.size, parent.frozen, parent.pids) == (4096, False, (me,))
        [holder] = parent.holders
        assert scene.mine.fileno() in holder.fds  # Python's mmap holds a duplicate too
        assert holder.maps == 1
        assert holder.command == _comm(me)

        shared = found[f"{scene.tag}-fd"]
        # Holders come sorted by pid: a child's is lower than its parent's after pids wrap.
        assert (shared.size, shared.frozen, shared.pids) == (
            1000,
            False,
            tuple(sorted((me, child))),
        )
        assert shared.holders == tuple(
            sorted(
                (
                    Holder(me, _comm(me), (scene.shared.fileno(),), 0),
                    Holder(child, _comm(child), (scene.child.inherited[shared.name],), 0),
                ),
                key=lambda holder: holder.pid,
            )
        )
        assert _comm(child) == os.path.basename(sys.executable)[:15]

        mapped = found[f"{scene.tag}-map"]
        assert mapped.pids == (child,)
        assert mapped.holders == (Holder(child, _comm(child), (), 1),)
        if privileged:
            assert (mapped.size, mapped.frozen) == (5000, False)
        else:
            assert (mapped.size, mapped.frozen) == (None, None)

        frozen = found[f"{scene.tag}-frozen"]
        assert (frozen.size, frozen.frozen, frozen.pids) == (3, True, tuple(sorted((me, child))))
        assert frozen.holders == tuple(
            sorted(
                (
                    Holder(me, _comm(me), (scene.frozen.fileno(),), 0),
                    Holder(child, _comm(child), (scene.child.inherited[frozen.name],), 0),
                ),
                key=lambda holder: holder.pid,
            )
        )
        assert len({held.identity for held in found.values()}) == 4


def test_cli_prints_a_row_per_memory(capsys: pytest.CaptureFixture[str]) -> None:
    if _refused():
        return
    with _scene() as scene:
        assert cli_main(["ps"]) == 0
        out = capsys.readouterr().out
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(scene.tag)}
        me, child = os.getpid(), scene.child.pid
        assert sorted(rows) == sorted(scene.mine_only(scan()))
        assert rows[f"{scene.tag}-parent"].split()[1:3] == ["4096", "no"]
        assert f"{me} {_comm(me)}: fd {scene.mine.fileno()}" in rows[f"{scene.tag}-parent"]
        assert rows[f"{scene.tag}-frozen"].split()[1:3] == ["3", "yes"]
        assert f"{child} {_comm(child)}: 1 map" in rows[f"{scene.tag}-map"]
        shared = rows[f"{scene.tag}-fd"]
        assert f"{me} {_comm(me)}: fd {scene.shared.fileno()}" in shared
        assert shared.count(";") == 1  # two holders, sorted by pid
        assert f"{child} {_comm(child)}: fd {scene.child.inherited[f'{scene.tag}-fd']}" in shared
        assert out.splitlines()[0].split()[:4] == ["NAME", "SIZE", "FROZEN", "INODE"]


def test_python_m_anonshm_ps_lists_them_from_another_process() -> None:
    if _refused():
        return
    with _scene() as scene:
        result = subprocess.run(
            [sys.executable, "-m", "anonshm", "ps"],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        names = {line.split()[0] for line in result.stdout.splitlines()}
        assert names >= set(scene.mine_only(scan()))


def test_memories_with_one_name_are_told_apart() -> None:
    if _refused():
        return
    name = f"ps-twin-{uuid.uuid4().hex[:12]}"
    with AnonymousMemory(10, name=name) as one, AnonymousMemory(20, name=name) as two:
        found = [held for held in scan() if held.name == name]
        assert sorted((held.size, held.pids[0]) for held in found) == [
            (10, os.getpid()),
            (20, os.getpid()),
        ]
        assert {held.holders[0].fds for held in found} == {(one.fileno(),), (two.fileno(),)}


def test_unprintable_names_are_escaped_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    if _refused():
        return
    tag = uuid.uuid4().hex[:12]
    with AnonymousMemory(7, name=f"ps-{tag}\x1b[2J\nx"):
        assert cli_main(["ps"]) == 0
    out = capsys.readouterr().out
    assert f"ps-{tag}\\x1b[2J\\nx " in out
    assert "\x1b" not in out


def test_scan_skips_a_process_that_exited_but_is_not_reaped() -> None:
    if _refused():
        return
    with subprocess.Popen([sys.executable, "-c", "pass"]) as zombie:
        # WNOWAIT: wait for the exit but leave the zombie in /proc for the scan.
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)
        assert zombie.pid not in {pid for held in scan() for pid in held.pids}
        assert cli_main(["ps", "--all"]) == 0


_UNPRIVILEGED = """
    import ctypes, json, mmap, os, sys
    from anonshm._cli import main
    from anonshm._ps import scan

    os.setgid(65534)
    os.setuid(65534)  # no capability left, and no longer dumpable
    fd = os.memfd_create(sys.argv[1], os.MFD_CLOEXEC)
    os.ftruncate(fd, 5000)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, 5000, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    os.close(fd)
    for all_users in (False, True):
        found = scan(all_users=all_users)
        print(json.dumps([[held.name, held.size, held.frozen, held.pids] for held in found]))
    main(["ps", "--all"])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user (nobody)")
def test_an_unprivileged_user_sees_only_its_own_and_maps_reveal_no_size() -> None:
    if _refused():
        return
    name = f"ps-nobody-{uuid.uuid4().hex[:12]}"
    with AnonymousMemory(8, name=f"ps-private-{uuid.uuid4().hex[:12]}") as private:
        result = run_child(_UNPRIVILEGED, name)
    assert result.stderr == ""
    assert private.name not in result.stdout
    own, every, *table = result.stdout.splitlines()
    for listing in (own, every):
        [ours] = [held for held in json.loads(listing) if held[0] == name]
        assert ours[1:3] == [None, None]
        [pid] = ours[3]
    [row] = [line for line in table if line.startswith(name)]
    assert row.split()[1:3] == ["?", "?"]
    assert row.endswith(f"{pid} {os.path.basename(sys.executable)[:15]}: 1 map")


@pytest.mark.parametrize(
    ("memories", "processes", "summary"),
    [
        (1, 1, "1 memory held by 1 of this user's processes"),
        (2, 1, "2 memories held by 1 of this user's processes"),
        (21, 3, "21 memories held by 3 of this user's processes"),
    ],
)
def test_the_summary_counts_in_the_right_number(
    memories: int, processes: int, summary: str
) -> None:
    assert _summary(memories, processes, "this user's processes") == summary


# A user nobody else is: every memory this user's processes hold is the child's own.
_LONE_USER = """
    import os, sys
    from anonshm import _ps  # before the uid change: this uid may not read the stdlib
    from anonshm._cli import main

    uid = int(sys.argv[1])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    fds = []
    for count in (1, 2):
        fds.append(os.memfd_create(f"ps-lone-{count}", os.MFD_CLOEXEC))
        main(["ps"])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become a user of its own")
def test_ps_says_1_memory_and_2_memories() -> None:
    if _refused():
        return
    taken: set[int] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # exited meanwhile
            with open(f"/proc/{pid}/status") as status:
                taken.update(int(line.split()[1]) for line in status if line.startswith("Uid:"))
    uid = next(uid for uid in range(3_000_000_000 + os.getpid(), 2**32 - 2) if uid not in taken)
    out = run_child(_LONE_USER, str(uid)).stdout.splitlines()
    summaries = [line for line in out if " held by " in line]
    assert summaries == [
        "1 memory held by 1 of this user's processes",
        "2 memories held by 1 of this user's processes",
    ]
