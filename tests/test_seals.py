"""Fixed size: no holder of a memfd memory can shrink or grow it under the others.

A peer that shrinks a shared file makes every other holder's map SIGBUS past the new
end; the memfd seals ``F_SEAL_SHRINK | F_SEAL_GROW`` make the kernel refuse it.  The
``directory=`` backend cannot be sealed, and says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from anonshm import AnonShmError, AnonymousMemory, Protection, spawn
from tests.conftest import (
    ALLOW_RESIZABLE,
    FEATURES,
    assert_freeze_refused,
    child_env,
    python_child,
    run_child,
)

SIZE = 3 * 4096 + 123  # not page-aligned: the last, partial page is where SIGBUS would hit
FIXED_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
F_SEAL_FUTURE_WRITE = 0x10
WRITE_SEALS = fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE

# The holder tries every way to change the size, through its own descriptor and through
# a writable reopen of the same file, then proves its own map still reaches the end.
HOLDER = """
    import errno, json, os, socket, sys
    from anonshm import AnonymousMemory

    how, resizable = sys.argv[1], sys.argv[3] == "1"
    if how == "inherit":
        mem = AnonymousMemory.inherited("sealed")
    elif how == "token":
        mem = AnonymousMemory.from_token(sys.argv[2])
    else:
        with socket.socket(fileno=int(sys.argv[2])) as sock:
            mem = AnonymousMemory.receive(sock, allow_resizable=resizable)
    size = mem.size
    reopened = os.open(f"/proc/self/fd/{mem.fileno()}", os.O_RDWR)
    attempts = {}
    for where, fd in (("own", mem.fileno()), ("reopened", reopened)):
        for what, call in (
            ("shrink", lambda: os.ftruncate(fd, size // 2)),
            ("zero", lambda: os.ftruncate(fd, 0)),
            ("grow", lambda: os.ftruncate(fd, size + 4096)),
            ("fallocate", lambda: os.posix_fallocate(fd, size, 4096)),
        ):
            try:
                call()
            except OSError as exc:
                attempts[f"{where} {what}"] = errno.errorcode[exc.errno]
            else:
                attempts[f"{where} {what}"] = "allowed"
    os.close(reopened)
    with mem, mem.map(size - 1, 1) as view:
        view[0] = ord("c")
    print(json.dumps({"attempts": attempts, "size": size}))
"""


def _seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a file on disk, which has no seals at all
            raise
        return 0


def _report(text: str | None) -> dict[str, object]:
    assert text is not None
    report: dict[str, object] = json.loads(text)
    return report


def _hold(how: str, mem: AnonymousMemory) -> dict[str, object]:
    env = child_env()
    resizable = str(int(ALLOW_RESIZABLE))
    if how == "inherit":
        argv = python_child(HOLDER, how, "-", resizable)
        with spawn(argv, inherit=[mem], env=env, stdout=subprocess.PIPE, text=True) as child:
            out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        return _report(out)
    if how == "token":
        done = run_child(HOLDER, how, mem.export(), resizable, env=env, pass_fds=(mem.fileno(),))
        return _report(done.stdout)
    left, right = socket.socketpair()
    with left, right:
        mem.send(left)
        fd = right.fileno()
        done = run_child(HOLDER, how, str(fd), resizable, env=env, pass_fds=(fd,))
    return _report(done.stdout)


@pytest.mark.parametrize("how", ["inherit", "token", "send"])
def test_a_holder_cannot_resize_and_the_parents_map_keeps_working(how: str) -> None:
    with AnonymousMemory(SIZE, name="sealed") as mem, mem.map() as view:
        view[:] = b"p" * SIZE
        result = _hold(how, mem)
        # Checked before the map is touched again: a shrunk file would SIGBUS this process.
        # Without seals every attempt succeeds, and it ends grown, its bytes zeroed.
        final, refusal = (SIZE, "EPERM") if FEATURES.fixed_size else (SIZE + 4096, "allowed")
        assert mem.fixed_size is FEATURES.fixed_size
        assert os.fstat(mem.fileno()).st_size == final
        assert result["attempts"] == {
            f"{where} {what}": refusal
            for where in ("own", "reopened")
            for what in ("shrink", "zero", "grow", "fallocate")
        }
        assert result["size"] == SIZE
        assert view[SIZE - 1] == ord("c")  # the child's write at the very end arrived
        view[:] = b"q" * SIZE  # every page of the parent's map is still there
        assert view[:] == b"q" * SIZE


def test_the_creator_is_bound_by_the_seals_too() -> None:
    with AnonymousMemory(SIZE) as mem:
        if not FEATURES.fixed_size:  # documented: no seals, so no holder is bound
            assert not mem.fixed_size
            os.ftruncate(mem.fileno(), SIZE + 1)
            assert os.fstat(mem.fileno()).st_size == SIZE + 1
            return
        assert _seals(mem.fileno()) & FIXED_SIZE_SEALS == FIXED_SIZE_SEALS
        for size in (SIZE - 1, 0, SIZE + 1):
            with pytest.raises(PermissionError):
                os.ftruncate(mem.fileno(), size)
        with pytest.raises(OSError) as caught:
            os.posix_fallocate(mem.fileno(), 0, SIZE + 4096)
        assert caught.value.errno == errno.EPERM
        assert os.fstat(mem.fileno()).st_size == SIZE


def test_the_seals_survive_a_read_only_handle_and_a_freeze() -> None:
    with AnonymousMemory(SIZE, protection=Protection.READ_ONLY) as ro:
        assert ro.fixed_size is FEATURES.fixed_size
        if FEATURES.fixed_size:
            assert _seals(ro.fileno()) & FIXED_SIZE_SEALS == FIXED_SIZE_SEALS
    with AnonymousMemory(SIZE) as mem:
        if not FEATURES.freeze:
            assert_freeze_refused(mem)
            return
        mem.freeze()
        assert _seals(mem.fileno()) & FIXED_SIZE_SEALS == FIXED_SIZE_SEALS


# A disk filesystem (F_GET_SEALS is EINVAL) and tmpfs (every file there has F_SEAL_SEAL).
@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm"])
def test_a_directory_memory_is_documented_unsealed(where: str, tmp_path: Path) -> None:
    directory = tmp_path if where == "tmp_path" else Path(where)
    if not directory.is_dir():
        pytest.skip(f"no {where} on this machine")
    with AnonymousMemory(SIZE, directory=directory) as mem:
        assert _seals(mem.fileno()) & (FIXED_SIZE_SEALS | WRITE_SEALS) == 0
        assert not mem.frozen
        with pytest.raises(AnonShmError, match="cannot freeze"):
            mem.freeze()
        # The refused freeze changed nothing: still one writable, unsealed memory.
        assert not mem.frozen
        assert mem.protection is Protection.READ_WRITE
        assert fcntl.fcntl(mem.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        with mem.map() as view:
            view[:4] = b"free"
        # What the documentation warns about: any holder may resize such a memory.
        os.ftruncate(mem.fileno(), SIZE + 4096)
        assert os.fstat(mem.fileno()).st_size == SIZE + 4096
