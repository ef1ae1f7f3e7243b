"""Crashes: SIGKILL at any point leaves nothing behind, and survivors keep their data.

Synchronisation is by pipes, never by sleeping: a worker writes one byte per step, the
test kills it after a (seeded) random number of steps; every descendant holds the write
end of an "alive" pipe, so its EOF means the last of them is gone.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import (
    IN_DEV_SHM,
    NAMED_FOR_A_MOMENT,
    child_env,
    leaked_shm_names,
    python_child,
    shm_names,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

SHM = Path("/dev/shm")
GONE_TIMEOUT = 60.0  # only turns a hang into a failure

# Loops through everything a holder does, one progress byte per step, with up to two
# grandchildren alive at a time that hold the memory until their stdin reaches EOF.
# Each memory's identity (device, inode) goes to the log first: kernel names are not
# what every backend has.
WORKER = """
    import os, subprocess, sys
    from anonshm import AnonymousMemory, Protection, spawn
    from anonshm._backend import backend

    directory, name = sys.argv[1] or None, sys.argv[2]
    progress, alive, log = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    holder = (
        "import sys\\n"
        "from anonshm import AnonymousMemory\\n"
        f"with AnonymousMemory.inherited({name!r}) as mem, mem.map() as view:\\n"
        "    assert view[:4] == b'data'\\n"
        "    sys.stdin.buffer.read()\\n"
    )
    children = []

    def step():
        os.write(progress, b".")

    for i in range(10**9):
        mem = AnonymousMemory(4096 + i % 5000, name=name, directory=directory)
        st = os.fstat(mem.fileno())
        os.write(log, f"{st.st_dev} {st.st_ino}\\n".encode())
        step()
        view = mem.map()
        view[:4] = b"data"
        step()
        if i % 2:
            other = AnonymousMemory.from_token(mem.export())
            step()
            other.duplicate(protection=Protection.READ_ONLY).close()
            other.close()
            step()
        if i % 4 == 0:
            child = spawn([sys.executable, "-c", holder], inherit=[mem], pass_fds=[alive],
                          stdin=subprocess.PIPE)
            children.append(child)
            step()
            if len(children) > 2:
                old = children.pop(0)
                old.stdin.close()
                old.wait()
                step()
        if directory is None and i % 3 == 0 and backend.FEATURES.freeze:
            view.close()
            mem.freeze()
            step()
        mem.close()
        step()
"""


def _backing(backend: str, tmp_path: Path) -> str:
    if backend == "memfd":
        return ""
    directory = tmp_path / "backing"
    directory.mkdir()
    return str(directory)


def _holders_of(identities: set[tuple[int, int]], directory: str) -> list[str]:
    """Every /proc/<pid>/fd entry, in any process, that still holds one of ``identities``.

    A disk filesystem gives a freed inode number to the next file made (tmpfs never
    does): there a holder must also have the file in ``directory``.
    """
    held = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in identities and target.startswith(directory):
                held.append(f"{pid}/{fd}")
    return held


def _wait_for_eof(fd: int, what: str) -> bytes:
    """Read ``fd`` to EOF: every process holding the write end has exited."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], GONE_TIMEOUT)
        assert ready, f"{what} still held after {GONE_TIMEOUT} s"
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kill_trial(backend: str, seed: int, tmp_path: Path) -> None:
    directory = _backing(backend, tmp_path)
    name = f"crash-{os.getpid()}-{seed}-{backend}"
    in_shm = IN_DEV_SHM and not directory  # where the posix backend names its memories
    shm_before = shm_names() if in_shm else set()
    progress_r, progress_w = os.pipe()
    alive_r, alive_w = os.pipe()
    log = os.open(tmp_path / "identities", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
    try:
        argv = python_child(WORKER, directory, name, str(progress_w), str(alive_w), str(log))
        worker = subprocess.Popen(
            argv,
            env=child_env(),
            pass_fds=(progress_w, alive_w, log),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(progress_w)
        os.close(alive_w)
        progress_w = alive_w = -1
        assert worker.stderr is not None
        with worker:
            steps = random.Random(seed).randint(1, 120)
            seen = 0
            while seen < steps:
                chunk = os.read(progress_r, steps - seen)
                assert chunk, f"worker died on its own: {worker.stderr.read()!r}"
                seen += len(chunk)
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(timeout=GONE_TIMEOUT) == -signal.SIGKILL
        _wait_for_eof(alive_r, "the alive pipe")
    finally:
        for fd in (progress_r, progress_w, alive_r, alive_w, log):
            if fd >= 0:
                os.close(fd)
    made = {
        (int(dev), int(ino))
        for dev, ino in (
            line.split() for line in (tmp_path / "identities").read_text().splitlines()
        )
    }
    assert made  # the worker got as far as its first memory
    assert _holders_of(made, directory) == []
    names = [os.path.join(directory, entry) for entry in os.listdir(directory)] if directory else []
    if in_shm:  # any process's: a kill between the two calls leaves nothing to know it by
        names += [f"/dev/shm/{entry}" for entry in leaked_shm_names(shm_before)]
    # A backend that names each new memory for two system calls leaves the name when
    # SIGKILL falls between them: one at most, and empty (the size comes after).
    if NAMED_FOR_A_MOMENT and len(names) == 1 and os.stat(names[0]).st_size == 0:
        os.unlink(names.pop())
    assert names == []


BACKENDS = ["memfd", "directory"]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_at_a_random_step_leaves_nothing(backend: str, seed: int, tmp_path: Path) -> None:
    _kill_trial(backend, seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_many_sigkill_trials_leave_nothing(backend: str, tmp_path: Path) -> None:
    for seed in range(3, 53):
        trial = tmp_path / str(seed)
        trial.mkdir()
        _kill_trial(backend, seed, trial)


# Holds the memory through the death of its parent, then maps it again and sends back
# what it reads; argv: the ready pipe's write end, the go pipe's read end.
GRANDCHILD = """
    import os, sys
    from anonshm import AnonymousMemory

    ready, go = int(sys.argv[1]), int(sys.argv[2])
    with AnonymousMemory.inherited("kept") as mem, mem.map() as view:
        os.write(ready, b"ready")
        os.read(go, 2)  # the parent is dead by now
        with mem.map() as again:
            os.write(ready, again[:12] + view[-4:])
"""

# Creates the memory, starts the grandchild, prints its pid and waits to be killed.
MIDDLE = """
    import os, sys
    from anonshm import AnonymousMemory, spawn

    directory, grandchild, ready, go = sys.argv[1] or None, sys.argv[2], sys.argv[3], sys.argv[4]
    with AnonymousMemory(10000, name="kept", directory=directory) as mem:
        with mem.map() as view:
            view[:12] = b"parent wrote"
            view[-4:] = b"tail"
        child = spawn([sys.executable, "-c", grandchild, ready, go], inherit=[mem],
                      pass_fds=[int(ready), int(go)])
        # Only the grandchild holds the pipes now: its death is an EOF for the harness.
        os.close(int(ready))
        os.close(int(go))
        print(child.pid, flush=True)
        sys.stdin.read()  # until killed (or the harness gives up)
"""

# A subreaper adopts the grandchild once the middle process dies, so it is reaped
# here and not by whatever init the machine has.
SURVIVOR = """
    import ctypes, json, os, subprocess, sys, textwrap

    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    directory, middle, grandchild = sys.argv[1:4]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", middle, directory, grandchild, str(ready_w), str(go_r)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=[ready_w, go_r], text=True,
    )
    os.close(ready_w)
    os.close(go_r)
    grandchild_pid = int(proc.stdout.readline())
    assert os.read(ready_r, 5) == b"ready"
    proc.kill()
    middle_status = proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    os.write(go_w, b"go")
    seen = b""
    while chunk := os.read(ready_r, 100):  # EOF: the grandchild, the last holder, is gone
        seen += chunk
    _, status = os.waitpid(grandchild_pid, 0)
    print(json.dumps({
        "middle": middle_status,
        "grandchild": os.waitstatus_to_exitcode(status),
        "seen": seen.decode(),
    }))
"""


@pytest.fixture(params=BACKENDS)
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The backend's ``directory=`` argument ('' for memfd), checked empty afterwards."""
    directory = _backing(request.param, tmp_path)
    yield directory
    if directory:
        assert os.listdir(directory) == []


def test_a_child_keeps_its_data_after_its_parent_is_killed(backing: str) -> None:
    done = subprocess.run(
        python_child(SURVIVOR, backing, textwrap.dedent(MIDDLE), textwrap.dedent(GRANDCHILD)),
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "middle": -signal.SIGKILL,
        "grandchild": 0,
        "seen": "parent wrote" + "tail",
    }
