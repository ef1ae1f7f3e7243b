"""Hostile input: tokens, NSPR_INHERIT_FDS values, descriptors and socket messages.

Everything that comes from outside is refused unless it is exactly what NSPR (or
anonshm's own sender) writes, with a TokenError or InheritError -- and refusing never
touches a descriptor that someone else owns: the numbers named stay open, and no
descriptor or mapping is left behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonshm import AnonymousMemory, InheritError, Protection, TokenError
from anonshm._wire import (
    MAX_FD,
    format_inherit_fds,
    format_token,
    parse_inherit_fds,
    parse_token,
)
from tests.conftest import is_closed, open_fds

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

# The machine is shared and loaded: no deadline, and function-scoped fixtures are fine.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- the token format

NON_ASCII_DIGITS = "٠١٢٣٤٥٦٧٨٩０１２３۳३๓"


@PROPERTY
@given(st.text())
def test_any_text_is_refused_or_is_exactly_a_token(text: str) -> None:
    try:
        fd, protection = parse_token(text)
    except TokenError:
        return
    assert format_token(fd, protection) == text


@PROPERTY
@given(
    st.text(alphabet="0123456789:+- x\n\t" + NON_ASCII_DIGITS, max_size=14)
    | st.from_regex(r"[0-9]{1,12}:[0-9]", fullmatch=True)
)
def test_near_misses_are_refused_or_round_trip(text: str) -> None:
    try:
        fd, protection = parse_token(text)
    except TokenError:
        return
    assert 0 <= fd <= MAX_FD
    assert format_token(fd, protection) == text


@PROPERTY
@given(st.integers(0, MAX_FD), st.sampled_from(Protection))
def test_every_token_nspr_writes_is_read_back(fd: int, protection: Protection) -> None:
    token = format_token(fd, protection)
    assert token == f"{fd:d}:{protection.value:d}"  # NSPR's "%ld:%d"
    assert parse_token(token) == (fd, protection)


MANGLE: list[Callable[[str], str]] = [
    lambda t: " " + t,
    lambda t: t + " ",
    lambda t: t + "\n",
    lambda t: "\t" + t,
    lambda t: "+" + t,
    lambda t: "-" + t,
    lambda t: "0" + t,
    lambda t: t + ":",
    lambda t: t + ":0",
    lambda t: t.replace(":", "::"),
    lambda t: t.replace(":", " : "),
    lambda t: t.replace(":", ";"),
    lambda t: t.replace(":", ":0"),
    lambda t: t.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),
    lambda t: t.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
    lambda t: t.split(":")[0],
    lambda t: t + "\0",
]


@PROPERTY
@given(st.integers(0, MAX_FD), st.sampled_from(Protection), st.sampled_from(MANGLE))
def test_a_mangled_token_is_refused(
    fd: int, protection: Protection, mangle: Callable[[str], str]
) -> None:
    with pytest.raises(TokenError):
        parse_token(mangle(format_token(fd, protection)))


@pytest.mark.parametrize("token", [None, 3, 3.0, b"3:1", bytearray(b"3:1"), ["3:1"], ("3", 1)])
def test_a_token_that_is_not_a_str_is_a_type_error(token: object) -> None:
    with pytest.raises(TypeError):
        parse_token(token)
    with pytest.raises(TypeError):
        AnonymousMemory.from_token(token)  # type: ignore[arg-type]


# -------------------------------------------------------- the NSPR_INHERIT_FDS format

names = st.text(st.characters(exclude_characters=":\0", exclude_categories=["Cs"]), min_size=1)
entries = st.lists(
    st.tuples(names, st.integers(1, 9), st.integers(0, MAX_FD)),
    min_size=1,
    max_size=5,
    unique_by=lambda entry: entry[0],
)


def _nspr_value(items: list[tuple[str, int, int]]) -> str:
    # PR_ProcessAttrSetInheritableFD's "%s:%d:0x%lx", entries joined by ':'.
    return ":".join(f"{name}:{kind}:0x{fd:x}" for name, kind, fd in items)


@PROPERTY
@given(st.text())
def test_any_value_is_refused_or_is_exactly_nspr_entries(text: str) -> None:
    try:
        parsed = parse_inherit_fds(text)
    except InheritError:
        return
    assert _nspr_value([(name, kind, fd) for name, (kind, fd) in parsed.items()]) == text


@PROPERTY
@given(st.text(alphabet="ab:1x0fF+- " + NON_ASCII_DIGITS, max_size=24))
def test_inherit_near_misses_are_refused_or_round_trip(text: str) -> None:
    try:
        parsed = parse_inherit_fds(text)
    except InheritError:
        return
    assert _nspr_value([(name, kind, fd) for name, (kind, fd) in parsed.items()]) == text


@PROPERTY
@given(entries)
def test_every_value_nspr_writes_is_read_back(items: list[tuple[str, int, int]]) -> None:
    value = _nspr_value(items)
    assert parse_inherit_fds(value) == {name: (kind, fd) for name, kind, fd in items}
    files = [(name, fd) for name, _, fd in items]
    assert parse_inherit_fds(format_inherit_fds(files)) == {name: (1, fd) for name, fd in files}


INHERIT_MANGLE: list[Callable[[str], str]] = [
    lambda v: v + ":",
    lambda v: ":" + v,
    lambda v: v + " ",
    lambda v: v + "\n",
    lambda v: v.replace("0x", "0X"),
    lambda v: v.replace("0x", "0x0"),
    lambda v: v.replace("0x", ""),
    lambda v: v.replace("0x", "0x+"),
    lambda v: v.replace("0x", "-0x"),
    lambda v: v.replace(":1:", ":01:"),
    lambda v: v.replace(":1:", ":0:"),
    lambda v: v.replace(":1:", ": 1:"),
    lambda v: v.replace(":1:", "::"),
    lambda v: v + ":" + v,  # the same name twice
    lambda v: v.translate(str.maketrans("0123456789abcdef", "٠١٢٣٤٥٦٧٨٩ABCDEF")),
    lambda v: v.rsplit(":", 1)[0],
]


@PROPERTY
@given(names, st.integers(0, MAX_FD), st.sampled_from(INHERIT_MANGLE))
def test_a_mangled_inherit_value_is_refused(
    name: str, fd: int, mangle: Callable[[str], str]
) -> None:
    value = mangle(format_inherit_fds([(name, fd)]))
    with pytest.raises(InheritError):
        parse_inherit_fds(value)


# ------------------------------------------------ descriptors that are not memories


@contextlib.contextmanager
def _hostile_fd(kind: str, tmp_path: Path) -> Iterator[int]:
    """An open descriptor of ``kind`` that this test owns (closed afterwards)."""
    owned: list[int] = []
    if kind == "pipe":
        owned = list(os.pipe())
    elif kind == "socket":
        left, right = socket.socketpair()
        owned = [left.detach(), right.detach()]
    elif kind == "directory":
        owned = [os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)]
    elif kind == "named file":
        path = tmp_path / "named"
        path.write_bytes(b"named" * 1000)
        owned = [os.open(path, os.O_RDWR)]
    elif kind == "/dev/null":
        owned = [os.open(os.devnull, os.O_RDWR)]
    elif kind == "eventfd":
        owned = [os.eventfd(0)]
    elif kind == "empty memfd":
        owned = [os.memfd_create("empty")]
    elif kind == "write-only memfd":
        memfd = os.memfd_create("wronly")
        os.ftruncate(memfd, 4096)
        owned = [os.open(f"/proc/self/fd/{memfd}", os.O_WRONLY), memfd]
    elif kind == "O_PATH memfd":
        memfd = os.memfd_create("opath")
        os.ftruncate(memfd, 4096)
        owned = [os.open(f"/proc/self/fd/{memfd}", os.O_PATH), memfd]
    else:
        raise AssertionError(kind)
    try:
        yield owned[0]
    finally:
        for fd in owned:
            os.close(fd)


HOSTILE_FDS = [
    "pipe",
    "socket",
    "directory",
    "named file",
    "/dev/null",
    "eventfd",
    "empty memfd",
    "write-only memfd",
    # An O_PATH descriptor can be fstat-ed but never mapped or read.
    "O_PATH memfd",
]


def _identity(fd: int) -> tuple[int, int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)


@pytest.mark.parametrize("kind", HOSTILE_FDS)
@pytest.mark.parametrize("protection", [0, 1, 2])
def test_a_token_naming_a_non_memory_is_refused_and_left_open(
    kind: str, protection: int, tmp_path: Path, no_leaks: None
) -> None:
    with _hostile_fd(kind, tmp_path) as fd:
        before, fds = _identity(fd), open_fds()
        with pytest.raises(TokenError, match="token"):
            # close() only runs if the import wrongly succeeded: no leak on top of it.
            AnonymousMemory.from_token(f"{fd}:{protection}").close()
        assert _identity(fd) == before
        assert open_fds() == fds


@pytest.mark.parametrize("kind", HOSTILE_FDS)
def test_an_inherited_entry_naming_a_non_memory_is_refused_and_left_open(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    with _hostile_fd(kind, tmp_path) as fd:
        monkeypatch.setenv("NSPR_INHERIT_FDS", f"victim:1:0x{fd:x}")
        before, fds = _identity(fd), open_fds()
        with pytest.raises(InheritError, match="victim"):
            AnonymousMemory.inherited("victim").close()
        assert _identity(fd) == before
        assert open_fds() == fds


def test_stdin_is_refused_and_left_open(monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    if is_closed(0):
        pytest.skip("this run has no stdin")
    before = _identity(0)
    with pytest.raises(TokenError):
        AnonymousMemory.from_token("0:0").close()
    monkeypatch.setenv("NSPR_INHERIT_FDS", "stdin:1:0x0")
    with pytest.raises(InheritError):
        AnonymousMemory.inherited("stdin").close()
    assert _identity(0) == before


def _closed_number() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def test_a_closed_number_is_refused(monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    fd = _closed_number()
    with pytest.raises(TokenError, match="not open"):
        AnonymousMemory.from_token(f"{fd}:0")
    monkeypatch.setenv("NSPR_INHERIT_FDS", f"gone:1:0x{fd:x}")
    with pytest.raises(InheritError, match="not open"):
        AnonymousMemory.inherited("gone")
    assert is_closed(fd)


BAD_TOKENS = [
    "",
    " ",
    "{d}",
    "{d}:",
    ":1",
    "{d}:1 ",
    " {d}:1",
    "{d}:1\n",
    "+{d}:1",
    "-{d}:1",
    "0{d}:1",
    "{d}:01",
    "{d}:3",
    "{d}:-1",
    "{d}:1:{d}",
    "{d}:1:",
    "0x{x}:1",
    "{d}.0:1",
    "{d}e0:1",
    "٣:1",
    "{d}:١",
    "３:1",
    "{d}\0:1",
    "{d}:1\0",
    "2147483648:1",
    "9" * 30 + ":1",
    "99999999999:1",
    "name:1",
    "{d}:READ_WRITE",
]


@pytest.mark.parametrize("template", BAD_TOKENS, ids=repr)
def test_a_malformed_token_is_refused_and_the_memory_named_is_untouched(
    template: str, no_leaks: None
) -> None:
    with AnonymousMemory(4096, name="victim") as victim:
        fd = victim.fileno()
        fds = open_fds()
        with pytest.raises(TokenError):
            AnonymousMemory.from_token(template.format(d=fd, x=f"{fd:x}")).close()
        assert open_fds() == fds
        with victim.map() as view:
            view[:2] = b"ok"


BAD_INHERIT = [
    "",
    ":",
    "::",
    "victim",
    "victim:1",
    "victim:1:",
    "victim:1:{x}",
    "victim:1:{d}",
    "victim:1:0X{x}",
    "victim:1:0x0{x}",
    "victim:1:0x{X}",
    "victim:1:0x{x} ",
    " victim:1:0x{x}",
    "victim:1:0x{x}\n",
    "victim:1:0x{x}:",
    ":victim:1:0x{x}",
    "victim:01:0x{x}",
    "victim:0:0x{x}",
    "victim:10:0x{x}",
    "victim: 1:0x{x}",
    "victim:-1:0x{x}",
    "victim:1:-0x{x}",
    "victim:1:0x-{x}",
    "victim:1:0x+{x}",
    "victim:1:0x٣",
    "victim:١:0x{x}",
    "victim:1:0x80000000",
    "victim:1:0xffffffff",
    "victim:1:0x123456789",
    ":1:0x{x}",
    "victim:1:0x{x}:victim:1:0x{x}",
    "victim:1:0x{x}:other",
    "victim:1:0x{x}:other:1",
    "victim:2:0x{x}",  # a well-formed entry of another descriptor type
    "other:1:0x{x}",  # well-formed, but nothing named victim
]


@pytest.mark.parametrize("template", BAD_INHERIT, ids=repr)
def test_a_malformed_inherit_value_is_refused_and_the_memory_named_is_untouched(
    template: str, monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    with AnonymousMemory(4096, name="victim") as victim:
        fd = victim.fileno()
        upper = f"{fd:X}"  # uppercase hex, which NSPR never writes: it must show a letter
        upper = upper if set(upper) & set("ABCDEF") else f"A{fd:x}"
        value = template.format(d=fd, x=f"{fd:x}", X=upper)
        monkeypatch.setenv("NSPR_INHERIT_FDS", value)
        fds = open_fds()
        with pytest.raises(InheritError):
            AnonymousMemory.inherited("victim").close()
        assert open_fds() == fds
        with victim.map() as view:
            view[:2] = b"ok"


def test_no_variable_at_all_is_an_inherit_error(
    monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    monkeypatch.delenv("NSPR_INHERIT_FDS", raising=False)
    with pytest.raises(InheritError, match="not set"):
        AnonymousMemory.inherited("victim")


@pytest.mark.parametrize("name", [None, 1, b"victim"])
def test_an_inherited_name_that_is_not_a_str_is_a_type_error(name: object) -> None:
    with pytest.raises(TypeError):
        AnonymousMemory.inherited(name)  # type: ignore[arg-type]


def test_importing_a_good_memory_never_adopts_the_number(
    monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    with AnonymousMemory(4096, name="victim") as victim:
        fd = victim.fileno()
        monkeypatch.setenv("NSPR_INHERIT_FDS", f"victim:1:0x{fd:x}")
        for imported in (
            AnonymousMemory.from_token(victim.export()),
            AnonymousMemory.inherited("victim"),
        ):
            with imported:
                assert imported.fileno() != fd
            assert not is_closed(fd)
        with victim.map() as view:
            view[:2] = b"ok"


# ------------------------------------------------------------- messages on a socket

_HEADER = struct.Struct("!8sQBH")  # what send() writes: magic, size, protection, name length
_MAGIC = b"anonshm\x01"


def _header(size: int = 4096, protection: int = 1, name: bytes = b"victim") -> bytes:
    return _HEADER.pack(_MAGIC, size, protection, len(name)) + name


@pytest.fixture
def memfd() -> Iterator[int]:
    """A descriptor of a real 4096-byte memory, owned by the test (the sender's copy)."""
    with AnonymousMemory(4096, name="victim") as mem:
        yield mem.fileno()


@pytest.fixture
def o_path(memfd: int) -> Iterator[int]:
    """An O_PATH descriptor of that memory: it names the file but gives no access to it."""
    fd = os.open(f"/proc/self/fd/{memfd}", os.O_PATH)
    yield fd
    os.close(fd)


@pytest.fixture
def pipe_fds() -> Iterator[list[int]]:
    """Both ends of a pipe, owned by the test."""
    fds = list(os.pipe())
    yield fds
    for fd in fds:
        os.close(fd)


def _messages(
    memfd: int, pipe: list[int], o_path: int
) -> list[tuple[str, bytes, list[int], bool, str]]:
    """(id, data, descriptors, then close the sender, what receive() must raise)."""
    return [
        ("garbage, no descriptor", b"\xff" * 64, [], False, "exactly one descriptor, not 0"),
        ("garbage with a memory", b"\xff" * 64, [memfd], False, "not an anonshm handoff"),
        ("good message, no descriptor", _header(), [], False, "not 0"),
        ("two descriptors", _header(), [memfd, memfd], False, "not 2"),
        ("nine descriptors", _header(), [memfd] * 9, False, "more than 8|not 9"),
        ("a pipe instead of memory", _header(), [pipe[0]], False, "is a pipe"),
        ("an O_PATH descriptor", _header(protection=0), [o_path], False, "memory received"),
        ("a wrong size", _header(size=8192), [memfd], False, "8192 were announced"),
        ("size zero", _header(size=0), [memfd], False, "0 were announced"),
        ("protection 7", _header(protection=7), [memfd], False, "protection 7"),
        ("no name", _header(name=b""), [memfd], False, "0 bytes"),
        ("a name with ':'", _header(name=b"a:b"), [memfd], False, "bad name"),
        ("a name that is not UTF-8", _header(name=b"\xff\xfe"), [memfd], False, "bad name"),
        ("header cut short", _header()[:10], [memfd], True, "cut short"),
        ("name cut short", _header()[:-2], [memfd], True, "cut short"),
    ]


MESSAGE_IDS = [case[0] for case in _messages(0, [0, 0], 0)]


@pytest.mark.parametrize("case", range(len(MESSAGE_IDS)), ids=MESSAGE_IDS)
def test_a_hostile_message_is_refused_and_nothing_leaks(
    case: int, memfd: int, pipe_fds: list[int], o_path: int, no_leaks: None
) -> None:
    _, data, fds, hang_up, match = _messages(memfd, pipe_fds, o_path)[case]
    sent = [_identity(fd) for fd in fds]
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)  # everything is queued before receive(): never waits for more
        fds_before = open_fds()
        socket.send_fds(left, [data], fds)
        if hang_up:
            left.shutdown(socket.SHUT_WR)
        with pytest.raises(TokenError, match=match):
            AnonymousMemory.receive(right).close()
        assert open_fds() == fds_before  # every descriptor that arrived was closed
    assert [_identity(fd) for fd in fds] == sent  # the sender's own stay open


def test_a_peer_that_hangs_up_at_once_is_an_eof(no_leaks: None) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.close()
        with pytest.raises(EOFError):
            AnonymousMemory.receive(right)


def test_a_peer_that_stalls_mid_message_times_out_without_a_leak(
    memfd: int, no_leaks: None
) -> None:
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(0.2)
        fds_before = open_fds()
        socket.send_fds(left, [_header()[:10]], [memfd])
        with pytest.raises(TimeoutError):
            AnonymousMemory.receive(right)
        assert open_fds() == fds_before
