"""Threads: a memory reaches only the child it was spawned for, however busy the parent.

Sixteen threads each create a memory and, released together by a barrier, spawn a
child that inherits it; eight more threads start plain ``Popen(close_fds=False)``
children at the same moment, which inherit every inheritable descriptor there is.
A memory made inheritable in the parent, even for an instant, would show up in a
child of another thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from anonshm import AnonymousMemory, spawn
from tests.conftest import MEMORY_LINK, child_env, file_id, python_child

SPAWNERS = 16
BYSTANDERS = 8
ROUNDS = 2

# Lists this child's descriptors, each with the file it is (the listing's own
# descriptor drops out: readlink of a closed number fails) and what NSPR_INHERIT_FDS
# it got, then reads its memory.
REPORT = """
    import json, os, sys
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{entry}")
            fds[entry] = [os.readlink(f"/proc/self/fd/{entry}"), st.st_dev, st.st_ino]
        except OSError:
            pass
    fds = {fd: held for fd, held in fds.items() if held[0] != f"/proc/{os.getpid()}/fd"}
    report = {"fds": fds, "env": os.environ.get("NSPR_INHERIT_FDS")}
    if len(sys.argv) > 1:
        from anonshm import AnonymousMemory
        with AnonymousMemory.inherited(sys.argv[1]) as mem, mem.map() as view:
            report["content"] = view[: len(sys.argv[1])].decode()
    print(json.dumps(report))
"""


def _spawner(index: int, barrier: threading.Barrier) -> dict[str, object]:
    name = f"thread{index}"
    with AnonymousMemory(4096 + index, name=name) as mem:
        with mem.map() as view:
            view[: len(name)] = name.encode()
        barrier.wait()
        with spawn(
            python_child(REPORT, name),
            inherit=[mem],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child:
            out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert out is not None
        report: dict[str, object] = json.loads(out)
        report["name"] = name
        report["fd"] = child.inherited[name]
        report["identity"] = list(file_id(mem.fileno()))
        return report


def _bystander(barrier: threading.Barrier) -> dict[str, object]:
    env = child_env()
    env.pop("NSPR_INHERIT_FDS", None)
    barrier.wait()
    # close_fds=False: this child gets every descriptor that is inheritable right now.
    with subprocess.Popen(
        python_child(REPORT),
        env=env,
        close_fds=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report: dict[str, object] = json.loads(out)
    return report


def _memories(fds: dict[str, list[object]]) -> dict[str, list[object]]:
    return {fd: held for fd, held in fds.items() if str(held[0]).startswith(MEMORY_LINK)}


def test_each_child_gets_exactly_its_own_memory() -> None:
    held: set[tuple[int, int]] = set()
    for _ in range(ROUNDS):
        barrier = threading.Barrier(SPAWNERS + BYSTANDERS)
        with ThreadPoolExecutor(SPAWNERS + BYSTANDERS) as pool:
            spawned = [pool.submit(_spawner, index, barrier) for index in range(SPAWNERS)]
            bystanders = [pool.submit(_bystander, barrier) for _ in range(BYSTANDERS)]
            reports = [future.result() for future in spawned]
            others = [future.result() for future in bystanders]
        for report in reports:
            name, fd, fds = report["name"], report["fd"], report["fds"]
            assert isinstance(fds, dict)
            assert report["env"] == f"{name}:1:0x{fd:x}"
            assert report["content"] == name
            # stdin, stdout, stderr and this one memory: nothing of another thread's.
            extra = {n: target for n, target in fds.items() if n not in {"0", "1", "2", str(fd)}}
            assert extra == {}, f"{name}'s child got more than its memory"
            assert str(fd) in fds
            assert fds[str(fd)][1:] == report["identity"]  # its own memory, no other
            held.add((fds[str(fd)][1], fds[str(fd)][2]))
            assert str(fds[str(fd)][0]).startswith(MEMORY_LINK)
        for other in others:
            fds = other["fds"]
            assert isinstance(fds, dict)
            assert other["env"] is None
            assert _memories(fds) == {}, fds
    # Every thread closed its memory: none is left open here.
    assert [fd for fd, identity in _own_fds().items() if identity in held] == []


def _own_fds() -> dict[str, tuple[int, int]]:
    identities = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            identities[entry] = file_id(int(entry))
        except OSError:
            continue
    return identities
