"""freeze(): a read-only handoff that the kernel enforces against every holder.

After ``freeze()`` only the maps the creator made before it can still write.  A child
that receives the memory -- inherited, by token, or over a socket -- tries every route
back to write access it has, and each must fail with the parent's data intact.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import socket
import subprocess
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from anonshm import AnonymousMemory, Protection, spawn
from tests.conftest import (
    FEATURES,
    assert_freeze_refused,
    child_env,
    need_root_and_unshare,
    python_child,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SIZE = 2 * mmap.PAGESIZE + 100
F_SEAL_FUTURE_WRITE = 0x10
FROZEN_SEALS = F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL

# Each route is tried, then the whole memory is read back through the child's own
# descriptor: "intact" is what the parent's bytes look like right after that attempt.
ESCALATE = r"""
    import ctypes, errno, fcntl, hashlib, json, mmap, os, socket, sys
    from anonshm import AnonymousMemory, Protection, TokenError

    how, digest, parent_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if how == "inherit":
        mem = AnonymousMemory.inherited("frozen")
    elif how == "token":
        mem = AnonymousMemory.from_token(sys.argv[4])
    else:
        with socket.socket(fileno=int(sys.argv[4])) as sock:
            mem = AnonymousMemory.receive(sock)
    fd, size = mem.fileno(), mem.size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    ctypes.pythonapi.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
    ctypes.pythonapi.PyBuffer_Release.argtypes = [ctypes.c_void_p]
    PUNCH_HOLE = 0x2 | 0x1  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

    def address(obj):
        # The first field of a Py_buffer is the pointer; 128 bytes hold the whole struct.
        raw = ctypes.create_string_buffer(128)
        if ctypes.pythonapi.PyObject_GetBuffer(obj, raw, 0):
            raise RuntimeError("no buffer")
        try:
            return ctypes.c_void_p.from_buffer(raw).value
        finally:
            ctypes.pythonapi.PyBuffer_Release(raw)

    def check(result):
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def scribble(mm):
        # Only reached when mprotect allowed writing: try to reach the parent's bytes.
        ctypes.memmove(address(mm), b"X" * 16, 16)

    def mprotect_then_write(mm):
        check(libc.mprotect(address(mm), len(mm), mmap.PROT_READ | mmap.PROT_WRITE))
        scribble(mm)

    def shared_read_only(source):
        return mmap.mmap(source, size, mmap.MAP_SHARED, mmap.PROT_READ)

    def on_map(make, action):
        mm = make()
        try:
            action(mm)
        finally:
            mm.close()

    def on_anonshm_read_only_map(action):
        with mem.map(protection=Protection.READ_ONLY) as view:
            action(view.buf)

    def write_through(made):
        # Reached only when the route was not refused: try to change the parent's bytes.
        with made:
            made[:16] = b"X" * 16

    def write_copy():
        write_through(mem.map(protection=Protection.WRITE_COPY))

    def shared_writable(target):
        write_through(mmap.mmap(target, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))

    def import_writable(target):
        with AnonymousMemory.from_token(f"{target}:1") as got:
            write_through(got.map())

    def routes(prefix, target):
        return {
            f"{prefix} write": lambda: os.write(target, b"X"),
            f"{prefix} pwrite": lambda: os.pwrite(target, b"X", 1),
            f"{prefix} mmap shared writable": lambda: shared_writable(target),
            f"{prefix} mprotect shared read-only map": lambda: on_map(
                lambda: shared_read_only(target), mprotect_then_write
            ),
            f"{prefix} madvise MADV_REMOVE": lambda: on_map(
                lambda: shared_read_only(target), lambda mm: mm.madvise(mmap.MADV_REMOVE)
            ),
            f"{prefix} ftruncate": lambda: os.ftruncate(target, 1),
            f"{prefix} punch hole": lambda: check(libc.fallocate(target, PUNCH_HOLE, 0, size)),
            f"{prefix} add F_SEAL_WRITE": lambda: fcntl.fcntl(
                target, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE
            ),
            f"{prefix} import as READ_WRITE": lambda: import_writable(target),
        }

    def run(call):
        try:
            call()
        except OSError as exc:
            # anonshm's own PermissionError carries no errno: name the exception then.
            outcome = errno.errorcode[exc.errno] if exc.errno else type(exc).__name__
        except TokenError as exc:
            outcome = type(exc).__name__
        else:
            outcome = "allowed"
        intact = hashlib.sha256(os.pread(fd, size, 0)).hexdigest() == digest
        return {"outcome": outcome, "intact": intact, "size": os.fstat(fd).st_size}

    def via_reopen(path, name):
        rw = os.open(path, os.O_RDWR)
        try:
            return {what: run(call) for what, call in routes(name, rw).items()}
        finally:
            os.close(rw)

    attempts = {
        "map READ_WRITE": lambda: write_through(mem.map(protection=Protection.READ_WRITE)),
        "duplicate READ_WRITE": lambda: mem.duplicate(protection=Protection.READ_WRITE).close(),
        "mprotect anonshm READ_ONLY map": lambda: on_anonshm_read_only_map(mprotect_then_write),
        "WRITE_COPY map": write_copy,
        **routes("fd", fd),
    }
    report = {name: run(call) for name, call in attempts.items()}
    for path, name in (
        (f"/proc/self/fd/{fd}", "reopened"),
        (f"/proc/{os.getppid()}/fd/{parent_fd}", "parent's fd reopened"),
    ):
        try:
            report.update(via_reopen(path, name))
        except OSError as exc:
            report[f"{name}: open"] = {"outcome": errno.errorcode[exc.errno], "intact": True}
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    print(json.dumps({
        "report": report,
        "frozen": mem.frozen,
        "protection": mem.protection.name,
        "access": fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE,
        "seals": seals,
        "content": hashlib.sha256(os.pread(fd, size, 0)).hexdigest(),
    }))
    mem.close()
"""

# What each route must end in.  The received descriptor is read-only, so writing
# through it is EBADF/EACCES before the seal is even asked; a writable reopen of the
# same file gets as far as the seal, which answers EPERM (EACCES for mappings).
EXPECTED = {
    "map READ_WRITE": {"PermissionError"},
    "duplicate READ_WRITE": {"PermissionError"},
    # Allowed, but private: MAP_PRIVATE pages are copied, the parent's stay intact.
    "mprotect anonshm READ_ONLY map": {"allowed"},
    "WRITE_COPY map": {"allowed"},
    "fd write": {"EBADF"},
    "fd pwrite": {"EBADF"},
    "fd mmap shared writable": {"EACCES"},
    "fd mprotect shared read-only map": {"EACCES"},
    "fd madvise MADV_REMOVE": {"EACCES"},
    "fd ftruncate": {"EINVAL", "EBADF"},
    "fd punch hole": {"EBADF"},
    "fd add F_SEAL_WRITE": {"EPERM"},
    "fd import as READ_WRITE": {"TokenError"},
}
for _name in ("reopened", "parent's fd reopened"):
    EXPECTED |= {
        f"{_name} write": {"EPERM"},
        f"{_name} pwrite": {"EPERM"},
        f"{_name} mmap shared writable": {"EPERM"},
        f"{_name} mprotect shared read-only map": {"EACCES"},
        f"{_name} madvise MADV_REMOVE": {"EACCES"},
        f"{_name} ftruncate": {"EPERM"},
        f"{_name} punch hole": {"EPERM"},
        f"{_name} add F_SEAL_WRITE": {"EPERM"},
        f"{_name} import as READ_WRITE": {"TokenError"},
    }


def _pattern() -> bytes:
    return (bytes(range(1, 256)) * (SIZE // 255 + 1))[:SIZE]


@contextmanager
def _frozen() -> Iterator[tuple[AnonymousMemory, bytes]]:
    """A frozen memory of ``_pattern()`` whose creator's earlier writer wrote after freezing."""
    with AnonymousMemory(SIZE, name="frozen") as mem:
        with mem.map() as writer:
            data = _pattern()
            writer[:] = data[:-5] + b"\0" * 5
            mem.freeze()
            writer[SIZE - 5 :] = data[-5:]  # still allowed: this map predates the freeze
        yield mem, data


def _escalate(how: str, mem: AnonymousMemory, digest: str) -> dict[str, object]:
    args = [how, digest, str(mem.fileno())]
    inherit = [mem] if how == "inherit" else []
    left, right = socket.socketpair()
    with left, right:
        if how == "token":
            args.append(mem.export())
            pass_fds = [mem.fileno()]
        else:
            args.append(str(right.fileno()))
            pass_fds = [right.fileno()]
        argv = python_child(ESCALATE, *args)
        with spawn(
            argv,
            inherit=inherit,
            pass_fds=pass_fds,
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        ) as child:
            if how == "send":
                mem.send(left)
            out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out is not None
    result: dict[str, object] = json.loads(out)
    return result


def _refused() -> None:
    """Where the backend cannot freeze, a test of freezing checks the clear refusal."""
    with AnonymousMemory(SIZE, name="frozen") as mem:
        assert_freeze_refused(mem)


@pytest.mark.parametrize("how", ["inherit", "token", "send"])
def test_a_child_has_no_route_back_to_write_access(how: str) -> None:
    if not FEATURES.freeze:
        _refused()
        return
    with _frozen() as (mem, data):
        _no_route_back(how, mem, data)


def _no_route_back(how: str, mem: AnonymousMemory, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    result = _escalate(how, mem, digest)
    report = result["report"]
    assert isinstance(report, dict)
    outcomes = {route: attempt["outcome"] for route, attempt in report.items()}
    assert outcomes.keys() == EXPECTED.keys()
    wrong = {route: got for route, got in outcomes.items() if got not in EXPECTED[route]}
    assert wrong == {}, f"routes that did not fail as they must: {wrong}"
    broken = [route for route, attempt in report.items() if not attempt["intact"]]
    assert broken == [], f"routes after which the parent's bytes changed: {broken}"
    assert all(attempt["size"] == SIZE for attempt in report.values())
    assert result["frozen"] is True
    assert result["protection"] == "READ_ONLY"
    assert result["access"] == os.O_RDONLY
    seals = result["seals"]
    assert isinstance(seals, int)
    assert seals & FROZEN_SEALS == FROZEN_SEALS
    assert result["content"] == digest
    with mem.map() as view:
        assert view[:] == data


def test_the_creator_keeps_its_earlier_map_and_nothing_else() -> None:
    if not FEATURES.freeze:
        _refused()
        return
    with AnonymousMemory(SIZE, name="frozen") as mem:
        writer = mem.map()
        writer[:5] = b"early"
        mem.freeze()
        assert mem.frozen
        assert mem.protection is Protection.READ_ONLY
        writer[5:10] = b"later"
        with mem.map() as reader:
            assert reader[:10] == b"earlylater"
            assert reader.buf.readonly
        with pytest.raises(PermissionError):
            mem.map(protection=Protection.READ_WRITE)
        with pytest.raises(PermissionError):
            mem.duplicate(protection=Protection.READ_WRITE)
        fd = mem.fileno()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        # Its own descriptor is read-only now (EBADF) ...
        with pytest.raises(OSError) as caught:
            os.write(fd, b"X")
        assert caught.value.errno == errno.EBADF
        with pytest.raises(OSError) as caught:
            os.pwrite(fd, b"X", 0)
        assert caught.value.errno == errno.EBADF
        # ... and a writable reopen of the same file meets the seal (EPERM).
        rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.write(rw, b"X")
            with pytest.raises(PermissionError):
                os.pwrite(rw, b"X", 0)
            with pytest.raises(PermissionError):
                mmap.mmap(rw, SIZE, mmap.MAP_SHARED, mmap.PROT_WRITE).close()
            with pytest.raises(PermissionError):
                fcntl.fcntl(rw, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        finally:
            os.close(rw)
        writer.close()
        with mem.map() as reader:
            assert reader[:10] == b"earlylater"


# The reader maps the frozen memory, then waits for the parent's line on stdin.
READER = """
    import sys
    from anonshm import AnonymousMemory

    with AnonymousMemory.inherited("frozen") as mem, mem.map() as view:
        print(mem.frozen, view[:5].decode(), flush=True)
        sys.stdin.readline()
        print(view[:5].decode(), flush=True)
"""


def test_readers_see_what_the_creators_earlier_map_writes_after_the_freeze() -> None:
    if not FEATURES.freeze:
        _refused()
        return
    with AnonymousMemory(SIZE, name="frozen") as mem, mem.map() as writer:
        writer[:5] = b"first"
        mem.freeze()
        argv = python_child(READER)
        with spawn(
            argv,
            inherit=[mem],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdin is not None
            assert child.stdout is not None
            assert child.stdout.readline().split() == ["True", "first"]
            writer[:5] = b"again"
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "again"
            child.stdin.close()
            assert child.wait(timeout=60) == 0


def test_a_freeze_at_any_line_of_send_never_announces_what_the_descriptor_is_not() -> None:
    # send() takes the descriptor and the protection it announces together: a freeze
    # (in another thread, or a signal handler) at any line of it leaves the receiver
    # with a memory that matches what it was told, never a refused good memory.
    from tests._faults import each_line

    if not FEATURES.freeze:
        _refused()
        return

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    state: dict[str, AnonymousMemory] = {}
    try:

        def setup() -> Callable[[], object]:
            mem = state["mem"] = AnonymousMemory(SIZE, name="raced")
            return lambda: mem.send(left)

        def check(outcome: type[BaseException] | None) -> None:
            assert outcome is None
            with AnonymousMemory.receive(right) as got:
                assert got.name == "raced"
                if got.protection is Protection.READ_WRITE:
                    with got.map() as view:
                        view[:1] = b"w"  # not frozen when it was sent
                else:
                    assert got.frozen
            state["mem"].close()

        def freeze() -> None:
            state["mem"].freeze()

        assert each_line(setup, freeze, check) >= 3
    finally:
        left.close()
        right.close()


def test_send_racing_freeze_in_threads_is_never_refused() -> None:
    import threading

    if not FEATURES.freeze:
        _refused()
        return

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    refused = 0
    try:
        for _ in range(1000):
            with AnonymousMemory(SIZE, name="raced") as mem:
                freezer = threading.Thread(target=mem.freeze)
                freezer.start()
                mem.send(left)
                freezer.join()
                try:
                    AnonymousMemory.receive(right).close()
                except Exception:
                    refused += 1
    finally:
        left.close()
        right.close()
    assert refused == 0


# freeze() is all or nothing: everything that can fail comes before the seal.
FREEZE_FAILS = """
    import errno, json, os, resource, sys
    from anonshm import AnonShmError, AnonymousMemory

    mem = AnonymousMemory(4096, name="kept")
    filler = []
    if sys.argv[1] == "emfile":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
    else:  # no /proc in this private mount namespace
        import subprocess
        subprocess.run(["mount", "-t", "tmpfs", "none", "/proc"], check=True)
    report = {}
    try:
        mem.freeze()
    except OSError as exc:
        report["error"] = [errno.errorcode[exc.errno], str(exc)]
    except AnonShmError as exc:  # a backend that cannot freeze at all
        report["error"] = [type(exc).__name__, str(exc)]
    for fd in filler:  # room again for what the report imports
        os.close(fd)
    report["frozen"] = mem.frozen
    report["protection"] = mem.protection.name
    with mem.map() as view:
        view[:5] = b"still"
        report["writable"] = view[:5] == b"still"
    if sys.argv[1] == "noproc":
        try:
            AnonymousMemory(4096, protection=0)
        except OSError as exc:
            report["read_only_create"] = [errno.errorcode[exc.errno], str(exc)]
    print(json.dumps(report))
"""


def _freeze_fails(how: str, *prefix: str) -> dict[str, Any]:
    done = subprocess.run(
        [*prefix, *python_child(FREEZE_FAILS, how)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_freeze_without_descriptors_left_changes_nothing() -> None:
    report = _freeze_fails("emfile")
    assert report["error"][0] == "EMFILE"
    assert (report["frozen"], report["protection"], report["writable"]) == (
        False,
        "READ_WRITE",
        True,
    )


@pytest.mark.root
def test_a_freeze_without_proc_changes_nothing_and_names_proc() -> None:
    unshare = need_root_and_unshare()
    report = _freeze_fails("noproc", unshare, "-m", "--propagation", "private")
    assert (report["frozen"], report["protection"], report["writable"]) == (
        False,
        "READ_WRITE",
        True,
    )
    code, message = report["error"]
    if not FEATURES.freeze:
        assert (code, "cannot freeze" in message) == ("AnonShmError", True)
        assert "read_only_create" not in report  # the twin needs no /proc
        return
    assert code == "ENOENT"
    assert "/proc is not mounted" in message
    code, message = report["read_only_create"]
    assert (code, "/proc is not mounted" in message) == ("ENOENT", True)
