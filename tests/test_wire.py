"""NSPR's wire formats, exactly as NSPR writes them."""

from __future__ import annotations

import pytest

from anonshm import InheritError, Protection, TokenError
from anonshm._wire import format_inherit_fds, format_token, parse_inherit_fds, parse_token


@pytest.mark.parametrize(
    ("fd", "protection", "token"),
    [(3, Protection.READ_WRITE, "3:1"), (0, Protection.READ_ONLY, "0:0"), (1234, 2, "1234:2")],
)
def test_token_is_nspr_ld_colon_d(fd: int, protection: int, token: str) -> None:
    assert format_token(fd, Protection(protection)) == token
    assert parse_token(token) == (fd, protection)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "3",
        "3:",
        ":1",
        "3:3",
        "3:-1",
        "-3:1",
        "+3:1",
        " 3:1",
        "3:1 ",
        "3:1\n",
        "03:1",
        "3:01",
        "3:1:0",
        "0x3:1",
        "3.0:1",
        "٣:1",
        "3:١",
        "99999999999:1",
        "3;1",
        "3：1",
    ],
    ids=repr,
)
def test_anything_else_is_a_token_error(token: str) -> None:
    with pytest.raises(TokenError, match=r"token|descriptor"):
        parse_token(token)


def test_a_token_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="token must be a str"):
        parse_token(b"3:1")


def test_inherit_fds_is_nspr_name_type_hex() -> None:
    value = format_inherit_fds([("a", 4), ("frame", 0x1F)])
    assert value == "a:1:0x4:frame:1:0x1f"
    assert parse_inherit_fds(value) == {"a": (1, 4), "frame": (1, 31)}


def test_inherit_fds_accepts_other_nspr_descriptor_types() -> None:
    # An NSPR parent may pass sockets or pipes beside the memory.
    assert parse_inherit_fds("sock:2:0x5:mem:1:0x6:pipe:5:0x0") == {
        "sock": (2, 5),
        "mem": (1, 6),
        "pipe": (5, 0),
    }


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a",
        "a:1",
        "a:1:0x4:",
        "a:1:4",
        "a:1:0X4",
        "a:1:0x04",
        "a:1:0xA",
        "a::0x4",
        ":1:0x4",
        "a:0:0x4",
        "a:11:0x4",
        "a:x:0x4",
        "a:1:0x",
        "a:1:0x-1",
        "a:1:0x100000000",
        "a:1:0x4:a:1:0x5",
        "a:1: 0x4",
        "a:1:0x4 ",
    ],
    ids=repr,
)
def test_malformed_inherit_fds_is_an_inherit_error(value: str) -> None:
    with pytest.raises(InheritError, match="NSPR_INHERIT_FDS"):
        parse_inherit_fds(value)
