"""NSPR's wire formats: the exported token and the NSPR_INHERIT_FDS variable.

Both are parsed strictly, exactly as NSPR's own writers produce them; anything looser
is refused with a message that says what was wrong.
"""

from ._errors import InheritError, TokenError

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Final

__all__ = [
    "INHERIT_VARIABLE",
    "PROTECTION_NAMES",
    "PR_DESC_FILE",
    "PR_DESC_SOCKET_TCP",
    "READ_ONLY",
    "READ_WRITE",
    "WINDOWS_MAP_ACCESS",
    "WRITE_COPY",
    "allows",
    "check_name",
    "check_protection",
    "format_inherit_fds",
    "format_token",
    "format_windows_token",
    "parse_inherit_fds",
    "parse_token",
    "parse_windows_token",
]

INHERIT_VARIABLE: "Final" = "NSPR_INHERIT_FDS"
PR_DESC_FILE: "Final" = 1
# NSPR's type for a stream socket (PR_DESC_SOCKET_TCP, also what PR_AF_LOCAL stream
# sockets are): the notification socket of a channel end.
PR_DESC_SOCKET_TCP: "Final" = 2
MAX_NAME_BYTES: "Final" = 249  # memfd_create's limit (NAME_MAX minus "memfd:")
MAX_FD: "Final" = 2**31 - 1

_DECIMAL: "Final" = frozenset("0123456789")
_HEX: "Final" = frozenset("0123456789abcdef")
_CHECKED_NAMES: dict[str, str] = {}  # a program labels memories with a few names, often
_MAX_CHECKED_NAMES: "Final" = 256
_PROTECTION_DIGITS: "Final" = ("0", "1", "2")

# NSPR's PRFileMapProtect, the values of the public Protection enum.  Inside the package
# a protection is one of these plain ints: the enum (and the 3 ms that importing enum
# costs a fresh child) is loaded only when a caller asks for a Protection.
READ_ONLY: "Final" = 0
READ_WRITE: "Final" = 1
WRITE_COPY: "Final" = 2
PROTECTION_NAMES: "Final" = ("READ_ONLY", "READ_WRITE", "WRITE_COPY")


def allows(have: int, wanted: int) -> bool:
    """Whether a memory of protection ``have`` may be mapped with ``wanted``.

    Private copies (``READ_ONLY``, ``WRITE_COPY``) may be made of any memory; a shared
    writable map (``READ_WRITE``) needs a ``READ_WRITE`` memory.
    """
    return wanted != READ_WRITE or have == READ_WRITE


def check_protection(value: object, what: str) -> int:
    """``value`` (a Protection, or its int) as a plain int; TypeError/ValueError if not one."""
    plain = value
    if type(plain) is not int:
        if not isinstance(plain, int) or isinstance(plain, bool):
            raise TypeError(f"{what} must be a Protection, not {type(plain).__name__}")
        plain = int(plain)  # a Protection member (or another int subclass)
    if not READ_ONLY <= plain <= WRITE_COPY:
        raise ValueError(f"{what} must be 0, 1 or 2 (a Protection), not {value!r}")
    return plain


def _digits(text: str, alphabet: frozenset[str], longest: int) -> bool:
    # Exactly what printf's %d / %x write for a non-negative number: no sign, no
    # space, no leading zero, ASCII only (str.isdigit would take "٣").
    return (
        0 < len(text) <= longest and alphabet.issuperset(text) and (text == "0" or text[0] != "0")
    )


def check_name(name: object) -> str:
    """Return ``name`` if it can label a memory, else raise TypeError/ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if type(name) is not str:  # a subclass may hash and compare as it likes
        return _checked_name(str(name))
    checked = _CHECKED_NAMES.get(name)
    if checked is None:
        checked = _checked_name(name)
        if len(_CHECKED_NAMES) < _MAX_CHECKED_NAMES:
            _CHECKED_NAMES[name] = checked
    return checked


def _checked_name(name: str) -> str:
    if not name:
        raise ValueError("name must not be empty")
    if ":" in name or "\0" in name:
        raise ValueError(f"name must contain no ':' and no NUL character: {name!r}")
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"name is not valid Unicode: {name!r}") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"name is {len(encoded)} bytes in UTF-8; at most {MAX_NAME_BYTES} fit")
    return name


def format_token(fd: int, protection: int) -> str:
    """NSPR's Unix token for a descriptor: ``"<fd>:<prot>"``."""
    return f"{fd}:{protection:d}"


def parse_token(token: object) -> tuple[int, int]:
    """The descriptor number and protection a token names; TokenError if malformed."""
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    # PR_ExportFileMapAsString writes "%ld:%d": digits, a colon, one of 0, 1, 2.
    fd_text, colon, prot_text = token.partition(":")
    if not (colon and prot_text in _PROTECTION_DIGITS and _digits(fd_text, _DECIMAL, 10)):
        raise TokenError(
            f"malformed token {token!r}: expected '<fd>:<prot>' with a decimal "
            "descriptor number and a protection of 0, 1 or 2"
        )
    fd = int(fd_text)
    if fd > MAX_FD:
        raise TokenError(f"token {token!r} names descriptor {fd}, which no process can have")
    return fd, int(prot_text)


# What NSPR's PR_CreateFileMap records as dwAccess for each protection on Windows (and
# passes to MapViewOfFile): FILE_MAP_READ, FILE_MAP_WRITE, FILE_MAP_COPY.
WINDOWS_MAP_ACCESS: "Final" = (4, 2, 1)


def format_windows_token(handle: int, protection: int) -> str:
    """NSPR's Windows token: ``"<prot>:<handle>:<dwAccess>"``, e.g. ``"1:412:2"``."""
    return f"{protection:d}:{handle:d}:{WINDOWS_MAP_ACCESS[protection]:d}"


def parse_windows_token(token: object) -> tuple[int, int]:
    """The handle and protection an NSPR Windows token names; TokenError if malformed.

    Parsed as strictly as NSPR writes it (``"%d:%lld:%ld"``): decimal numbers with no
    sign or leading zero, and the ``dwAccess`` that NSPR records for that protection.
    """
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    fields = token.split(":")
    if not (
        len(fields) == 3
        and fields[0] in _PROTECTION_DIGITS
        and _digits(fields[1], _DECIMAL, 10)
        and fields[2] == str(WINDOWS_MAP_ACCESS[int(fields[0])])
    ):
        raise TokenError(
            f"malformed token {token!r}: expected '<prot>:<handle>:<dwAccess>' with a "
            "protection of 0, 1 or 2, a decimal handle and that protection's access "
            "(0:h:4, 1:h:2 or 2:h:1)"
        )
    handle, protection = int(fields[1]), int(fields[0])
    # Handle values are multiples of 4: Windows ignores the two low bits, so 413 would
    # name handle 412.
    if not 0 < handle <= MAX_FD or handle % 4:
        raise TokenError(f"token {token!r} names {handle}, which is no handle value")
    return handle, protection


def format_inherit_fds(
    entries: list[tuple[str, int]], kinds: "Mapping[str, int] | None" = None
) -> str:
    """The value of NSPR_INHERIT_FDS for ``(name, fd)`` pairs.

    Each entry is a file (a memory) unless ``kinds`` gives its name another NSPR
    descriptor type (a channel end's socket).
    """
    kinds = kinds or {}
    return ":".join(f"{name}:{kinds.get(name, PR_DESC_FILE)}:0x{fd:x}" for name, fd in entries)


def parse_inherit_fds(value: str) -> dict[str, tuple[int, int]]:
    """Map each name in NSPR_INHERIT_FDS to ``(type, fd)``; InheritError if malformed."""
    fields = value.split(":")
    if not value or len(fields) % 3:
        raise InheritError(
            f"malformed {INHERIT_VARIABLE}={value!r}: expected '<name>:<type>:0x<fd>' "
            "entries joined by ':'"
        )
    entries: dict[str, tuple[int, int]] = {}
    for index in range(0, len(fields), 3):
        name, kind, hex_fd = fields[index : index + 3]
        where = f"entry {index // 3 + 1} of {INHERIT_VARIABLE}={value!r}"
        if not name or "\0" in name:
            raise InheritError(f"malformed {where}: empty name")
        # PR_ProcessAttrSetInheritableFD writes "%d" for the type and "0x%x" for the fd.
        if len(kind) != 1 or kind not in "123456789":
            raise InheritError(f"malformed {where}: type {kind!r} is not a descriptor type")
        if not (hex_fd.startswith("0x") and _digits(hex_fd[2:], _HEX, 8)):
            raise InheritError(f"malformed {where}: {hex_fd!r} is not '0x' and a lowercase hex fd")
        fd = int(hex_fd, 16)
        if fd > MAX_FD:
            raise InheritError(f"malformed {where}: descriptor {fd} is out of range")
        if name in entries:
            raise InheritError(f"malformed {INHERIT_VARIABLE}={value!r}: {name!r} appears twice")
        entries[name] = (int(kind), fd)
    return entries
