"""The Windows backend, anonshm/_windows.py, on its own: handles, views, tokens, children."""

from __future__ import annotations

import _winapi
import ctypes
import msvcrt
import multiprocessing
import os
import subprocess
import sys
from multiprocessing import reduction
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonshm import _win32 as win32
from anonshm import _winsection as windows
from anonshm._errors import TokenError
from tests.windows import _backend, _helpers, _workers

assert sys.platform == "win32" or not TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

SIZE = _helpers.SIZE
PAGE = 4096
READ_ONLY, READ_WRITE, WRITE_COPY = 0, 1, 2
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
MEM_COMMIT = 0x1000
MEM_FREE = 0x1_0000


def _state(address: int) -> int:
    info = win32._MemoryBasicInformation()
    assert win32._VirtualQuery(address, ctypes.byref(info), ctypes.sizeof(info))
    return int(info.State)


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


# --- create, inspect, duplicate, close ---------------------------------------------


def test_create_gives_a_private_read_write_handle(section: int) -> None:
    assert win32.object_type_name(section) == "Section"
    assert win32.handle_flags(section) & win32.HANDLE_FLAG_INHERIT == 0
    # Only the section rights: no WRITE_DAC, WRITE_OWNER, DELETE or READ_CONTROL.
    assert win32.granted_access(section) == windows.READ_WRITE_ACCESS
    size, writable = windows.inspect(section)
    assert writable
    assert size == (_pages(SIZE) if _backend.UNDER_WINE else size)
    assert SIZE <= size <= _pages(SIZE)


def test_fresh_memory_reads_as_zeros(section: int) -> None:
    view = windows.map(section, 0, SIZE, READ_ONLY)
    assert view.tobytes() == bytes(SIZE)
    view.release()


def test_memory_over_4_gib_maps_past_4_gib() -> None:
    size = (5 << 30) + 3
    handle = windows.create(size)
    try:
        assert windows.inspect(handle)[0] in (size, _pages(size))
        far = (4 << 30) + 123
        writer = windows.map(handle, far, 5, READ_WRITE)
        writer[:] = b"far!!"
        reader = windows.map(handle, far - 1, 7, READ_ONLY)
        assert reader.tobytes() == b"\0far!!\0"
        writer.release()
        reader.release()
    finally:
        windows.close(handle)


def test_reopen_readonly_cannot_map_for_writing(section: int) -> None:
    writer = windows.map(section, 0, 5, READ_WRITE)
    writer[:] = b"hello"
    read_only = windows.reopen_readonly(section)
    try:
        assert win32.granted_access(read_only) == windows.READ_ONLY_ACCESS
        assert windows.inspect(read_only) == (windows.inspect(section)[0], False)
        with pytest.raises(OSError) as caught:
            windows.map(read_only, 0, 5, READ_WRITE)
        assert caught.value.winerror == ERROR_ACCESS_DENIED
        reader = windows.map(read_only, 0, 5, READ_ONLY)
        assert reader.tobytes() == b"hello"
        reader.release()
    finally:
        windows.close(read_only)
        writer.release()


def test_duplicate_lives_on_after_the_original_is_closed() -> None:
    original = windows.create(10)
    copy = windows.duplicate(original)
    windows.close(original)
    try:
        assert win32.granted_access(copy) == windows.READ_WRITE_ACCESS
        assert win32.handle_flags(copy) & win32.HANDLE_FLAG_INHERIT == 0
        view = windows.map(copy, 0, 10, READ_WRITE)
        view[:2] = b"ok"
        view.release()
    finally:
        windows.close(copy)


def test_close_closes_only_that_handle(section: int) -> None:
    copy = windows.duplicate(section)
    windows.close(copy)
    with pytest.raises(OSError) as caught:
        windows.inspect(copy)
    assert caught.value.winerror == ERROR_INVALID_HANDLE
    assert windows.inspect(section)[1]


# --- inspect refuses what is not anonymous memory ------------------------------------


def test_inspect_refuses_a_file(tmp_path: Path) -> None:
    with (tmp_path / "file").open("wb") as file:
        with pytest.raises(ValueError, match="is a File object, not a section"):
            windows.inspect(msvcrt.get_osfhandle(file.fileno()))


def test_inspect_refuses_a_pipe_and_a_process() -> None:
    reader, writer = _winapi.CreatePipe(None, 0)
    process = _winapi.OpenProcess(_winapi.PROCESS_DUP_HANDLE, False, os.getpid())
    try:
        for handle in (reader, writer, process):
            with pytest.raises(ValueError, match="not a section"):
                windows.inspect(handle)
    finally:
        for handle in (reader, writer, process):
            _winapi.CloseHandle(handle)


def test_inspect_refuses_a_section_of_a_file(tmp_path: Path) -> None:
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateFileMappingW.restype = ctypes.c_void_p
    kernel32.CreateFileMappingW.argtypes = (
        *(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32),
        ctypes.c_wchar_p,
    )
    with (tmp_path / "file").open("wb+") as file:
        file.write(b"x" * PAGE)
        file.flush()
        handle = kernel32.CreateFileMappingW(
            msvcrt.get_osfhandle(file.fileno()), None, win32.PAGE_READWRITE, 0, 0, None
        )
        assert handle, ctypes.get_last_error()
        try:
            with pytest.raises(ValueError, match="section of a file"):
                windows.inspect(handle)
        finally:
            windows.close(handle)


@pytest.mark.parametrize(
    ("access", "missing"),
    [(win32.FILE_MAP_READ, "SECTION_QUERY"), (win32.SECTION_QUERY, "FILE_MAP_READ")],
    ids=["no-query", "no-read"],
)
def test_inspect_refuses_a_handle_without_the_rights_it_needs(
    section: int, access: int, missing: str
) -> None:
    handle = win32.duplicate_handle(section, access)
    try:
        with pytest.raises(ValueError, match=f"lacks {missing} access"):
            windows.inspect(handle)
    finally:
        windows.close(handle)


# --- map ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (1, 10), (65_535, 2), (65_536, 7), (70_001, 29_999), (SIZE - 1, 1), (0, SIZE)],
)
def test_map_is_exactly_the_window(section: int, offset: int, length: int) -> None:
    view = windows.map(section, offset, length, READ_WRITE)
    assert (len(view), view.format, view.itemsize, view.readonly) == (length, "B", 1, False)
    view[-1] = 2
    view[0] = 1
    whole = windows.map(section, 0, SIZE, READ_ONLY)
    assert whole[offset] == 1
    assert whole[offset + length - 1] == (1 if length == 1 else 2)
    assert sum(whole) == (1 if length == 1 else 3)
    view.release()
    whole.release()


def test_read_only_map_refuses_writes(section: int) -> None:
    view = windows.map(section, 10, 10, READ_ONLY)
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    # No writable buffer can be had from it (a write would fault on read-only pages).
    with pytest.raises(TypeError):
        ctypes.c_char.from_buffer(view)
    if sys.version_info >= (3, 12):
        with pytest.raises((TypeError, BufferError)):
            ctypes.c_char.from_buffer(view.obj)  # type: ignore[arg-type]
    view.release()


def test_write_copy_map_keeps_writes_private(section: int) -> None:
    shared = windows.map(section, 0, 4, READ_WRITE)
    shared[:] = b"base"
    copy = windows.map(section, 0, 4, WRITE_COPY)
    copy[:] = b"mine"
    assert (shared.tobytes(), copy.tobytes()) == (b"base", b"mine")
    shared.release()
    copy.release()


def test_write_copy_map_of_a_read_only_handle(section: int) -> None:
    read_only = windows.reopen_readonly(section)
    try:
        copy = windows.map(read_only, 0, 4, WRITE_COPY)
        copy[:] = b"mine"
        assert windows.map(section, 0, 4, READ_ONLY).tobytes() == bytes(4)
        copy.release()
    finally:
        windows.close(read_only)


def test_unmapped_when_the_last_buffer_made_from_the_view_is_released(section: int) -> None:
    view = windows.map(section, 0, 100, READ_WRITE)
    address = _address(view)
    part = view[10:20]
    view.release()
    assert _state(address) == MEM_COMMIT  # the slice keeps the pages
    part[:2] = b"ok"
    del part  # CPython frees it here: no collection needed
    assert _state(address) == MEM_FREE


def test_read_only_view_is_unmapped_when_the_last_buffer_goes(section: int) -> None:
    before = len(windows._views)
    view = windows.map(section, 0, 100, READ_ONLY)
    inner = memoryview(view)[5:]
    view.release()
    assert len(windows._views) == before + 1
    assert inner[0] == 0
    del inner
    assert len(windows._views) == before


def test_view_outlives_the_handle() -> None:
    handle = windows.create(10)
    view = windows.map(handle, 0, 10, READ_WRITE)
    windows.close(handle)
    view[:5] = b"still"  # the view holds the section
    assert view.tobytes()[:5] == b"still"
    view.release()


# --- tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [("1:412:2", (412, READ_WRITE)), ("0:8:4", (8, READ_ONLY)), ("2:1024:1", (1024, WRITE_COPY))],
)
def test_parse_token_reads_nspr_windows_tokens(token: str, expected: tuple[int, int]) -> None:
    assert windows.parse_token(token) == expected


def test_format_token_writes_nspr_windows_tokens() -> None:
    assert [windows.format_token(412, protection) for protection in (0, 1, 2)] == [
        "0:412:4",
        "1:412:2",
        "2:412:1",
    ]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "1:412",
        "412:1",  # the Unix token
        "1:412:2:",
        "1:412:4",  # dwAccess of another protection
        "3:412:1",
        "-1:412:2",
        "1:-412:2",
        "1:0412:2",
        "1:412:02",
        " 1:412:2",
        "1:412:2\n",
        "1:4l2:2",
        "1:٤١٢:2",
        "1:0x19c:2",
        "1:412:3",
    ],
)
def test_parse_token_refuses_what_nspr_never_writes(token: str) -> None:
    with pytest.raises(TokenError, match="malformed token"):
        windows.parse_token(token)


@pytest.mark.parametrize("token", ["1:0:2", "1:413:2", "1:4294967296:2", "1:9999999999:2"])
def test_parse_token_refuses_numbers_that_are_no_handle(token: str) -> None:
    with pytest.raises(TokenError, match="no handle value"):
        windows.parse_token(token)


def test_parse_token_takes_only_str() -> None:
    with pytest.raises(TypeError, match="token must be a str"):
        windows.parse_token(b"1:412:2")


@given(st.integers(1, (2**31 - 1) // 4).map(lambda n: n * 4), st.sampled_from([0, 1, 2]))
def test_token_round_trip(handle: int, protection: int) -> None:
    assert windows.parse_token(windows.format_token(handle, protection)) == (handle, protection)


# --- children -------------------------------------------------------------------------

# A child imports the memory a token names, as from_token will: its own duplicate.
_IMPORT = """
    import sys
    import tests.windows._backend
    from anonshm import _winsection as windows
    handle, protection = windows.parse_token(sys.argv[1])
    size, writable = windows.inspect(handle)
    mine = windows.duplicate(handle)
    view = windows.map(mine, 70_000, 6, protection)
    print(size, writable, view.tobytes().decode())
    view[:] = b"child!"
    view.release()
    windows.close(mine)
"""

# A child judges with raw calls whether the handle value in argv[1] reaches the memory.
_RAW = """
    import ctypes, sys
    import tests.windows._backend
    from anonshm import _win32 as win32
    handle = int(sys.argv[1])
    for access in (win32.FILE_MAP_READ, win32.FILE_MAP_WRITE):
        try:
            address = win32.map_view(handle, access, 0, 0)
        except OSError as exc:
            print("refused", exc.winerror)
        else:
            print("mapped", ctypes.string_at(address + 70_000, 6).decode("latin-1"))
    try:
        win32.duplicate_handle(handle, win32.FILE_MAP_READ | win32.FILE_MAP_WRITE)
    except OSError as exc:
        print("upgrade refused", exc.winerror)
    else:
        print("upgraded")
"""


def _spawn(code: str, handle: int, token: str) -> subprocess.Popen[str]:
    # What spawn() will do: an inheritable duplicate for this one child, closed at once.
    inheritable = windows.inheritable_duplicate_for_child(handle)
    try:
        return subprocess.Popen(
            _helpers.child(code, token.replace("HANDLE", str(inheritable))),
            startupinfo=windows.child_startupinfo([inheritable]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        windows.close(inheritable)


def _output(child: subprocess.Popen[str]) -> list[str]:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    return out.split()


def _marked(section: int) -> memoryview:
    view = windows.map(section, 70_000, 6, READ_WRITE)
    view[:] = b"parent"
    return view


def test_child_maps_what_the_token_names_and_writes_back(section: int) -> None:
    view = _marked(section)
    child = _spawn(_IMPORT, section, "1:HANDLE:2")
    assert _output(child) == [str(windows.inspect(section)[0]), "True", "parent"]
    assert view.tobytes() == b"child!"
    view.release()


def test_child_given_a_read_only_handle_can_neither_write_nor_upgrade(section: int) -> None:
    view = _marked(section)
    read_only = windows.reopen_readonly(section)
    try:
        child = _spawn(_RAW, read_only, "HANDLE")
        assert _output(child) == [
            *("mapped", "parent"),
            *("refused", str(ERROR_ACCESS_DENIED)),
            *("upgrade", "refused", str(ERROR_ACCESS_DENIED)),
        ]
    finally:
        windows.close(read_only)
        view.release()


def test_child_not_handed_the_handle_cannot_reach_the_memory(section: int) -> None:
    view = _marked(section)
    inheritable = windows.inheritable_duplicate_for_child(section)
    try:
        # Started while the inheritable duplicate exists, told its value, not handed it.
        seen = _helpers.run(_helpers.child(_RAW, str(inheritable)))
    finally:
        windows.close(inheritable)
    assert "parent" not in seen
    assert view.tobytes() == b"parent"
    view.release()


def test_multiprocessing_spawn_passes_the_handle_through_duphandle(section: int) -> None:
    view = _marked(section)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        sent = reduction.DupHandle(section, windows.READ_WRITE_ACCESS)
        seen = pool.apply(_workers.write_through, (sent, 70_000, b"worker"))
    assert seen == b"parent"
    assert view.tobytes() == b"worker"
    view.release()


def test_inheritable_duplicate_is_inheritable_and_the_same_section(section: int) -> None:
    inheritable = windows.inheritable_duplicate_for_child(section)
    try:
        assert win32.handle_flags(inheritable) & win32.HANDLE_FLAG_INHERIT
        assert win32.granted_access(inheritable) == windows.READ_WRITE_ACCESS
        view = windows.map(inheritable, 0, 1, READ_WRITE)
        view[0] = 7
        assert windows.map(section, 0, 1, READ_ONLY)[0] == 7
        view.release()
    finally:
        windows.close(inheritable)
    assert win32.handle_flags(section) & win32.HANDLE_FLAG_INHERIT == 0


def test_child_startupinfo_adds_to_a_copy() -> None:
    given_info = subprocess.STARTUPINFO(
        dwFlags=subprocess.STARTF_USESHOWWINDOW, lpAttributeList={"handle_list": [8, 12]}
    )
    info = windows.child_startupinfo([12, 16], given_info)
    assert info.lpAttributeList == {"handle_list": [8, 12, 16]}
    assert info.dwFlags == subprocess.STARTF_USESHOWWINDOW
    assert given_info.lpAttributeList == {"handle_list": [8, 12]}
    assert windows.child_startupinfo([4]).lpAttributeList == {"handle_list": [4]}
