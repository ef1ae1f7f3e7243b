"""What receive() and the imports check before they trust a descriptor from elsewhere.

A hostile sender controls the descriptor and can act on it while this process looks
at it; another program's memfd may carry a name anonshm cannot hand on.  Each check
here is made against a real memfd made by hand, as such a peer would make it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, Protection, TokenError, _handoff, spawn
from tests._faults import each_line
from tests.conftest import ALLOW_RESIZABLE, FEATURES, child_env, python_child

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

FIXED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
F_SEAL_FUTURE_WRITE = 0x10


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        yield left, right


def raw_memfd(size: int, name: str | bytes = "raw", flags: int = 0) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | flags)  # type: ignore[arg-type]
    os.ftruncate(fd, size)
    return fd


def send_raw(sock: socket.socket, fd: int, size: int, protection: int = 1) -> None:
    _handoff.send_fd(sock, fd, _handoff.message("raw", size, protection))


def test_a_sender_that_shrinks_then_seals_at_any_line_of_receive_is_caught(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    # The hostile sender announces 8 KiB, then shrinks its memfd to 4 KiB and seals it.
    # Whatever line of receive() that lands on, the memory is refused, or accepted with
    # the size it really has: never with the old size, whose last page is SIGBUS.
    left, right = pair
    raws: list[int] = []
    accepted: list[tuple[int, int]] = []

    def setup() -> Callable[[], object]:
        raws.append(raw_memfd(8192))
        send_raw(left, raws[-1], 8192)

        def call() -> None:
            with AnonymousMemory.receive(right) as got:
                accepted.append((got.size, os.fstat(got.fileno()).st_size))

        return call

    def shrink_and_seal() -> None:
        os.ftruncate(raws[-1], 4096)
        fcntl.fcntl(raws[-1], fcntl.F_ADD_SEALS, FIXED)

    def check(outcome: type[BaseException] | None) -> None:
        assert outcome in (None, TokenError)
        for announced, real in accepted:
            assert announced == real
        accepted.clear()
        os.close(raws.pop())

    assert each_line(setup, shrink_and_seal, check) >= 3


def test_huge_pages_that_a_sender_can_take_back_are_refused_by_default(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    fd = raw_memfd(2 << 20, flags=os.MFD_HUGETLB)
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, FIXED)  # sealed size: hole punching is still open
        send_raw(left, fd, 2 << 20)
        # A backend that reads no seals finds every memory resizable, frozen or not.
        refusal = "huge pages" if FEATURES.fixed_size else "resized"
        with pytest.raises(TokenError, match=refusal):
            AnonymousMemory.receive(right)
        send_raw(left, fd, 2 << 20)
        with AnonymousMemory.receive(right, allow_resizable=True) as got:
            assert got.size == 2 << 20
        # Frozen, no holder can punch a hole any more (EPERM): accepted by default.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE)
        send_raw(left, fd, 2 << 20, protection=0)
        with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
            assert got.frozen is FEATURES.freeze
    finally:
        os.close(fd)


# Another program's memfd may carry any name the kernel takes; anonshm refuses none of
# them at import, and labels the memory with its default name instead.
@pytest.mark.parametrize(
    "recorded", ["a:b", b"\xff\xfe", "x" * 249], ids=["colon", "not-utf-8", "longest"]
)
def test_a_name_anonshm_cannot_carry_becomes_the_default_label(
    recorded: str | bytes, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd = raw_memfd(4096, recorded)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, FIXED)
    try:
        with AnonymousMemory.from_token(f"{fd}:1") as mem:
            # A backend whose kernel records no names reads none, good or bad.
            usable = recorded == "x" * 249 and FEATURES.names
            expected = recorded if usable else "anonshm"
            assert mem.name == expected
            left, right = pair
            mem.send(left)  # the peer accepts the label
            with AnonymousMemory.receive(right, allow_resizable=ALLOW_RESIZABLE) as got:
                assert got.name == expected
            code = "from anonshm import AnonymousMemory as M; print(M.inherited(%r).size)"
            argv = python_child(code % expected)
            with spawn(argv, inherit=[mem], env=child_env(), stdout=subprocess.PIPE) as child:
                out, _ = child.communicate(timeout=60)
            assert out.strip() == b"4096"
            with mem.duplicate(protection=Protection.READ_ONLY) as twin:
                assert twin.name == expected
    finally:
        os.close(fd)


def test_the_default_label_shows_where_the_kernel_name_was_unusable() -> None:
    fd = raw_memfd(16, "a:b")
    try:
        with AnonymousMemory.from_token(f"{fd}:0") as mem:
            assert mem.name == "anonshm"
            assert repr(mem).startswith("<AnonymousMemory 'anonshm'")
    finally:
        os.close(fd)
