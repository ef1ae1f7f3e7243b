"""send() and receive(): handing a memory over a Unix socket, and refusing bad messages."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import os
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonshm import AnonymousMemory, Protection, TokenError
from tests.conftest import (
    ALLOW_RESIZABLE,
    FEATURES,
    MEMORY_LINK,
    REOPENS_READ_ONLY,
    assert_freeze_refused,
    child_env,
    open_fds,
    python_child,
    run_child,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    Pair = tuple[socket.socket, socket.socket]

KINDS = [
    pytest.param(socket.SOCK_STREAM, id="stream"),
    pytest.param(socket.SOCK_SEQPACKET, id="seqpacket"),
]

# In-process pairs: everything a receive needs is queued before it starts, so waiting
# longer would never help; the timeout only turns a hang into a failure.
QUEUED_TIMEOUT = 2.0


@pytest.fixture(params=KINDS)
def pair(request: pytest.FixtureRequest, no_leaks: None) -> Iterator[Pair]:
    """A connected (sender, receiver) pair; ``no_leaks`` checks after both are closed."""
    left, right = socket.socketpair(socket.AF_UNIX, request.param)
    with left, right:
        right.settimeout(QUEUED_TIMEOUT)
        yield left, right


def _inode(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _message(mem: AnonymousMemory, kind: int) -> bytes:
    """The bytes that send() puts on the wire for ``mem`` (its descriptor dropped)."""
    left, right = socket.socketpair(socket.AF_UNIX, kind)
    with left, right:
        mem.send(left)
        data, fds, _, _ = socket.recv_fds(right, 4096, 4)
    for fd in fds:
        os.close(fd)
    return data


@pytest.mark.parametrize("how", ["read-write", "read-only", "frozen"])
def test_receive_gets_the_same_memory_with_name_size_and_protection(pair: Pair, how: str) -> None:
    left, right = pair
    protection = Protection.READ_ONLY if how == "read-only" else Protection.READ_WRITE
    with AnonymousMemory(5000, name=f"handoff-{how}", protection=protection) as mem:
        if how == "frozen":
            if not FEATURES.freeze:
                assert_freeze_refused(mem)
                return
            mem.freeze()
        mem.send(left)
        assert not mem.closed
        with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
            assert (got.name, got.size, got.protection) == (mem.name, 5000, mem.protection)
            assert _inode(got.fileno()) == _inode(mem.fileno())
            assert got.fileno() != mem.fileno()
            assert got.frozen == (how == "frozen")
            if how == "read-write":
                with got.map(4000) as view:
                    view[:6] = b"landed"
                with mem.map(4000, 6) as view:
                    assert bytes(view.buf) == b"landed"
            else:
                with pytest.raises(PermissionError):
                    got.map(protection=Protection.READ_WRITE)


def test_messages_in_a_row_stay_apart(pair: Pair) -> None:
    left, right = pair
    with (
        AnonymousMemory(10, name="first") as first,
        AnonymousMemory(20, name="second-with-a-longer-name") as second,
        contextlib.ExitStack() as stack,
    ):
        first.send(left)
        second.send(left)
        first.send(left)
        got = [
            stack.enter_context(AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE))
            for _ in range(3)
        ]
        assert [(mem.name, mem.size) for mem in got] == [
            ("first", 10),
            ("second-with-a-longer-name", 20),
            ("first", 10),
        ]
        assert _inode(got[2].fileno()) == _inode(first.fileno())


_RECEIVER = """
    import os, socket, sys
    from anonshm import AnonymousMemory

    # Started without the memory: not one descriptor of a memory before the handoff.
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [link for link in links if link.startswith(sys.argv[3])], links

    with socket.socket(socket.AF_UNIX, int(sys.argv[2])) as sock:
        sock.settimeout(60)
        sock.connect(sys.argv[1])
        with AnonymousMemory.receive(sock, allow_resizable=sys.argv[4] == "1") as mem, \
                mem.map() as view:
            st = os.fstat(mem.fileno())
            print(mem.name, mem.size, mem.protection.name, st.st_dev, st.st_ino)
            print(bytes(view.buf[:13]).decode())
            view[13:18] = b"child"
"""


@pytest.mark.parametrize("kind", KINDS)
def test_an_unrelated_process_receives_the_memory(tmp_path: Path, kind: int) -> None:
    path = str(tmp_path / "handoff.sock")
    with (
        socket.socket(socket.AF_UNIX, kind) as server,
        AnonymousMemory(3000, name="for-a-stranger") as mem,
    ):
        server.bind(path)
        server.listen(1)
        server.settimeout(60)
        with mem.map() as view:
            view[:13] = b"from a server"
        argv = python_child(_RECEIVER, path, str(int(kind)), MEMORY_LINK, str(int(ALLOW_RESIZABLE)))
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        ) as child:
            try:
                conn, _ = server.accept()
                with conn:
                    mem.send(conn)
                out, err = child.communicate(timeout=60)
            finally:
                if child.returncode is None:
                    child.kill()
        assert child.returncode == 0, err
        dev, ino = _inode(mem.fileno())
        assert out.splitlines() == [
            f"for-a-stranger 3000 READ_WRITE {dev} {ino}",
            "from a server",
        ]
        with mem.map(13, 5) as view:
            assert bytes(view.buf) == b"child"


def _send_truncated_header(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    socket.send_fds(left, [_message(mem, kind)[:5]], [mem.fileno()])


def _send_truncated_name(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    socket.send_fds(left, [_message(mem, kind)[:-3]], [mem.fileno()])


def _send_no_descriptor(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    left.sendall(_message(mem, kind))


def _send_garbage(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    socket.send_fds(left, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], [mem.fileno()])


def _send_two_descriptors(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    socket.send_fds(left, [_message(mem, kind)], [mem.fileno(), mem.fileno()])


def _send_many_descriptors(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    socket.send_fds(left, [_message(mem, kind)], [mem.fileno()] * 40)


def _send_pipe(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    read, write = os.pipe()
    try:
        socket.send_fds(left, [_message(mem, kind)], [read])
    finally:
        os.close(read)
        os.close(write)


def _send_named_file(left: socket.socket, mem: AnonymousMemory, kind: int, path: Path) -> None:
    path.write_bytes(bytes(mem.size))
    fd = os.open(path, os.O_RDWR)
    try:
        socket.send_fds(left, [_message(mem, kind)], [fd])
    finally:
        os.close(fd)


def _send_wrong_size(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    with AnonymousMemory(mem.size * 2, name=mem.name) as bigger:
        socket.send_fds(left, [_message(bigger, kind)], [mem.fileno()])


def _send_escalated_protection(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    # A read-write announcement with a read-only descriptor must not be believed.
    with mem.duplicate(protection=Protection.READ_ONLY) as readonly:
        socket.send_fds(left, [_message(mem, kind)], [readonly.fileno()])


def _send_nothing(left: socket.socket, mem: AnonymousMemory, kind: int) -> None:
    pass


BAD_MESSAGES = [
    pytest.param(_send_truncated_header, TokenError, "cut short", id="truncated-header"),
    pytest.param(_send_truncated_name, TokenError, "cut short", id="truncated-name"),
    pytest.param(_send_no_descriptor, TokenError, "exactly one descriptor, not 0", id="no-fd"),
    pytest.param(_send_garbage, TokenError, "not an anonshm handoff message", id="garbage"),
    pytest.param(_send_two_descriptors, TokenError, "exactly one descriptor, not 2", id="two-fds"),
    pytest.param(_send_many_descriptors, TokenError, r"\d+ or more descriptors", id="40-fds"),
    pytest.param(_send_pipe, TokenError, "is a pipe, not an anonymous", id="pipe"),
    pytest.param(_send_wrong_size, TokenError, r"4096 bytes, but 8192 were announced", id="size"),
    pytest.param(_send_escalated_protection, TokenError, "descriptor is read-only", id="prot"),
    pytest.param(_send_nothing, EOFError, "closed the socket before", id="eof"),
]


@pytest.mark.parametrize(("send", "error", "match"), BAD_MESSAGES)
def test_a_bad_message_is_a_clear_error_and_leaks_nothing(
    pair: Pair,
    send: Callable[[socket.socket, AnonymousMemory, int], None],
    error: type[Exception],
    match: str,
) -> None:
    left, right = pair
    with AnonymousMemory(4096, name="bad-message") as mem:
        send(left, mem, left.type)
        left.close()
        with pytest.raises(error, match=match):
            AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE)


@pytest.mark.parametrize(("send", "error", "match"), BAD_MESSAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_message_on_a_blocking_socket_is_the_same_clear_error(
    kind: int,
    send: Callable[[socket.socket, AnonymousMemory, int], None],
    error: type[Exception],
    match: str,
    no_leaks: None,
) -> None:
    # Blocking sockets take the single-recvmsg path (no peek): the same checks apply.
    left, right = socket.socketpair(socket.AF_UNIX, kind)
    with left, right, AnonymousMemory(4096, name="bad-message") as mem:
        send(left, mem, kind)
        left.close()  # everything is queued, or the end is: a blocking receive cannot hang
        with pytest.raises(error, match=match):
            AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE)


def test_a_named_file_is_refused_and_leaks_nothing(pair: Pair, tmp_path: Path) -> None:
    left, right = pair
    with AnonymousMemory(4096, name="bad-message") as mem:
        _send_named_file(left, mem, left.type, tmp_path / "named")
        left.close()
        with pytest.raises(TokenError, match="named file"):
            AnonymousMemory.receive(right)


def test_sending_a_closed_memory_is_a_value_error(pair: Pair) -> None:
    left, _ = pair
    mem = AnonymousMemory(16)
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        mem.send(left)


@pytest.mark.parametrize("not_a_socket", [None, 3, "sock", io.BytesIO()], ids=repr)
def test_something_else_than_a_socket_is_a_type_error(not_a_socket: object, no_leaks: None) -> None:
    with AnonymousMemory(16) as mem:
        with pytest.raises(TypeError, match=r"sock must be a socket\.socket"):
            mem.send(not_a_socket)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"sock must be a socket\.socket"):
            AnonymousMemory.receive(not_a_socket)  # type: ignore[arg-type]
        assert not mem.closed


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "timeout"])
def test_send_works_whether_the_socket_blocks_or_has_a_timeout(
    pair: Pair, timeout: float | None
) -> None:
    # Blocking: one sendmsg under the handle's lock; with a timeout (Python then waits
    # for room before the call): a duplicate is sent, without the lock.
    left, right = pair
    left.settimeout(timeout)
    with AnonymousMemory(16, name="t") as mem, mem.map() as view:
        view[:2] = b"ok"
        mem.send(left)
        with (
            AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got,
            got.map() as seen,
        ):
            assert seen[:2] == b"ok"


class _WrappedSocket:
    """A socket that wraps a real one instead of being one, as gevent's and eventlet's do."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def test_a_socket_wrapper_that_passes_for_a_socket_works(pair: Pair) -> None:
    left, right = pair
    with AnonymousMemory(16, name="wrapped") as mem:
        mem.send(_WrappedSocket(left))  # type: ignore[arg-type]
        wrapped = _WrappedSocket(right)
        with AnonymousMemory.receive(wrapped, allow_resizable=ALLOW_RESIZABLE) as got:  # type: ignore[arg-type]
            assert (got.name, got.size) == ("wrapped", 16)


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_with_a_descriptor_never_leak(garbage: bytes) -> None:
    with AnonymousMemory(64, name="fuzz") as mem:
        gc.collect()
        before = open_fds()
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with left, right:
            right.settimeout(QUEUED_TIMEOUT)
            socket.send_fds(left, [garbage], [mem.fileno()])
            left.close()
            with pytest.raises(TokenError):
                AnonymousMemory.receive(right).close()
        gc.collect()
        assert open_fds() == before


def test_a_resizable_memory_is_refused_unless_allowed(pair: Pair, tmp_path: Path) -> None:
    # Its sender could truncate it under the receiver's maps: SIGBUS at the next touch.
    left, right = pair
    with AnonymousMemory(64, directory=tmp_path, name="file") as mem:
        assert not mem.fixed_size
        mem.send(left)
        with pytest.raises(TokenError, match="resized"):
            AnonymousMemory.receive(right)
        mem.send(left)
        with AnonymousMemory.receive(right, allow_resizable=True) as got:
            assert got.name == "file"
            assert not got.fixed_size
    # An unsealed memfd made by another program is just as resizable.
    raw = os.memfd_create("foreign", os.MFD_CLOEXEC)
    try:
        os.ftruncate(raw, 64)
        message = _message_for(raw, "foreign", 64)
        socket.send_fds(left, [message], [raw])
        with pytest.raises(TokenError, match="resized"):
            AnonymousMemory.receive(right)
    finally:
        os.close(raw)


def _message_for(fd: int, name: str, size: int) -> bytes:
    """What send() would say of a memory of that name and size (read off a real send)."""
    with AnonymousMemory(size, name=name) as model:
        return _message(model, socket.SOCK_SEQPACKET)


def test_a_memory_announced_read_only_arrives_with_a_read_only_descriptor(pair: Pair) -> None:
    import fcntl

    left, right = pair
    with AnonymousMemory(64, name="ro") as mem:
        # A message announcing READ_ONLY, with the writable descriptor beside it.
        with mem.duplicate(protection=Protection.READ_ONLY) as ro:
            message = _message(ro, socket.SOCK_SEQPACKET)
        socket.send_fds(left, [message], [mem.fileno()])
        with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
            assert got.protection is Protection.READ_ONLY
            with pytest.raises(PermissionError, match="READ_WRITE"):
                got.map(protection=Protection.READ_WRITE)
            # Documented: where nothing can make it read-only (no /proc on macOS), the
            # handle keeps the read-write descriptor that arrived.
            access = os.O_RDONLY if REOPENS_READ_ONLY else os.O_RDWR
            assert fcntl.fcntl(got.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == access


def test_close_is_not_held_up_by_a_send_blocked_on_a_full_socket() -> None:
    import threading

    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                left.send(b"x" * 4096)
        left.setblocking(True)
        mem = AnonymousMemory(16)
        failed: list[OSError] = []

        def send() -> None:
            try:
                mem.send(left)
            except OSError as exc:  # the peer goes away at the end of the test
                failed.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(0.3)  # now blocked inside sendmsg, holding no lock of the memory
        closer = threading.Thread(target=mem.close)
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() waited for the blocked send"
        assert mem.closed
        right.close()  # the blocked send fails now; its duplicate is closed by send()
        sender.join(10)
        assert not sender.is_alive()
        assert len(failed) == 1


def test_receive_works_on_a_socket_that_passes_credentials(no_leaks: None) -> None:
    # SO_PASSCRED adds an SCM_CREDENTIALS message the ancillary buffer must make room for.
    left, right = socket.socketpair()
    with left, right:
        right.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        with AnonymousMemory(16, name="creds") as mem:
            mem.send(left)
            with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
                assert (got.name, got.size) == ("creds", 16)


SO_PASSPIDFD = 76  # Linux >= 6.5: a pidfd of the sender with every message
SCM_PIDFD = 0x04


def _pass_pidfds(sock: socket.socket) -> None:
    """Set SO_PASSPIDFD on ``sock``, or skip where this kernel does not have it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)
    except OSError as exc:
        if exc.errno != errno.ENOPROTOOPT:
            raise
        pytest.skip("this kernel has no SO_PASSPIDFD (Linux >= 6.5)")


def _pidfd_arrives(kind: int) -> bool:
    """Whether a message on a SO_PASSPIDFD socket of ``kind`` brings a pidfd (it is closed)."""
    left, right = socket.socketpair(socket.AF_UNIX, kind)
    with left, right:
        _pass_pidfds(right)
        left.send(b"x")
        _, ancillary, _, _ = right.recvmsg(1, socket.CMSG_SPACE(64))
    pidfds = [
        fd
        for level, type_, data in ancillary
        if (level, type_) == (socket.SOL_SOCKET, SCM_PIDFD)
        for fd in memoryview(data).cast("i")
    ]
    for fd in pidfds:
        os.close(fd)
    return bool(pidfds)


@pytest.mark.parametrize("credentials", [False, True], ids=["pidfd", "pidfd+credentials"])
@pytest.mark.parametrize("kind", KINDS)
def test_receive_closes_the_pidfd_that_so_passpidfd_adds(
    kind: int, credentials: bool, no_leaks: None
) -> None:
    assert _pidfd_arrives(kind)  # else the test would prove nothing
    left, right = socket.socketpair(socket.AF_UNIX, kind)
    with left, right, AnonymousMemory(16, name="pidfd") as mem:
        _pass_pidfds(right)
        if credentials:  # both: the credentials, the descriptor and the pidfd must fit
            right.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        for timeout in (None, QUEUED_TIMEOUT):  # the single recvmsg, and the peek first
            right.settimeout(timeout)
            mem.send(left)
            with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
                assert _inode(got.fileno()) == _inode(mem.fileno())
        for send in (_send_two_descriptors, _send_many_descriptors, _send_garbage):
            send(left, mem, kind)
            with pytest.raises(TokenError):
                AnonymousMemory.receive(right)


_FULL_TABLE = """
    import errno, os, resource, socket, sys
    from anonshm import AnonymousMemory

    kind, pidfds, resizable = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
    left, right = socket.socketpair(socket.AF_UNIX, kind)
    if pidfds:
        right.setsockopt(socket.SOL_SOCKET, 76, 1)  # SO_PASSPIDFD: the pidfd fails too
    mem = AnonymousMemory(64, name="unlucky")
    mem.send(left)  # which imports the handoff module while a file can still be opened
    mem.send(left)

    identity = os.fstat(mem.fileno())[1:3]  # (st_ino, st_dev)

    def memfds():
        return sum(os.stat(f"/proc/self/fd/{fd}")[1:3] == identity
                   for fd in os.listdir("/proc/self/fd") if fd.isdigit() and
                   os.path.exists(f"/proc/self/fd/{fd}"))

    before = memfds()
    limit = len(os.listdir("/proc/self/fd")) + 16
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    filler = []
    try:
        while True:
            filler.append(os.dup(0))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    try:
        AnonymousMemory.receive(right, allow_resizable=resizable)
    except OSError as exc:
        print(type(exc).__name__, errno.errorcode[exc.errno])
        print(exc.strerror)
    else:
        print("received")
    for fd in filler:
        os.close(fd)
    print(memfds() - before)  # the memory was dropped: nothing of it left open
    with AnonymousMemory.receive(right, allow_resizable=resizable) as got:  # the next is whole
        print(got.name, got.size)
"""


@pytest.mark.parametrize("pidfds", [False, True], ids=["plain", "pidfd"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_full_descriptor_table_is_emfile_not_the_peers_fault(kind: int, pidfds: bool) -> None:
    if pidfds:
        assert _pidfd_arrives(kind)
    result = run_child(_FULL_TABLE, str(int(kind)), str(int(pidfds)), str(int(ALLOW_RESIZABLE)))
    lines = result.stdout.splitlines()
    limit = lines[1].rpartition("RLIMIT_NOFILE=")[2].partition(")")[0]
    assert lines[0] == "OSError EMFILE", result.stdout
    assert "descriptor table is full" in lines[1]
    assert "the memory was dropped" in lines[1]
    assert limit.isdigit()
    assert lines[2:] == ["0", "unlucky 64"]


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on the loopback interface."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=QUEUED_TIMEOUT)
        peer, _ = server.accept()
    peer.settimeout(QUEUED_TIMEOUT)  # a receive on the old code waited for data
    return client, peer


@pytest.mark.parametrize("wrap", [False, True], ids=["socket", "wrapper"])
@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "timeout"])
def test_a_socket_that_is_not_a_unix_socket_is_refused_by_name(
    wrap: bool, timeout: float | None, no_leaks: None
) -> None:
    left, right = _tcp_pair()
    with left, right, AnonymousMemory(16, name="tcp") as mem:
        left.settimeout(timeout)
        sender = _WrappedSocket(left) if wrap else left
        receiver = _WrappedSocket(right) if wrap else right
        with pytest.raises(OSError, match=r"family AF_INET, not AF_UNIX") as sent:
            mem.send(sender)  # type: ignore[arg-type]
        assert sent.value.errno == errno.EAFNOSUPPORT
        with pytest.raises(OSError, match=r"family AF_INET, not AF_UNIX") as received:
            AnonymousMemory.receive(receiver)  # type: ignore[arg-type]
        assert received.value.errno == errno.EAFNOSUPPORT
        assert not mem.closed
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        AnonymousMemory(16, name="udp") as mem,
    ):
        with pytest.raises(OSError, match="family AF_INET, not AF_UNIX"):
            mem.send(udp)
