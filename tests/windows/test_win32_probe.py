"""Probes: what Windows (here, Wine) does with raw Win32 calls, below the backend.

Each test states one behaviour the Windows backend relies on, made with raw calls
(``anonshm._win32``'s one-call wrappers, or ctypes here).  Where Wine does not behave as
Windows is documented to, the test is an expected failure under Wine, with the reason;
on Windows it runs as a plain test.  /work/notes/windows.md records the results.
"""

from __future__ import annotations

import ctypes
import mmap
import msvcrt
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from anonshm import _win32 as win32
from tests.windows import _backend, _helpers

assert sys.platform == "win32" or not TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ERROR_INVALID_HANDLE = 6
ERROR_ACCESS_DENIED = 5
WRITE_DAC = 0x0004_0000
SEC_COMMIT = 0x0800_0000
PAGE = 4096
RW = win32.FILE_MAP_READ | win32.FILE_MAP_WRITE | win32.SECTION_QUERY
RO = win32.FILE_MAP_READ | win32.SECTION_QUERY

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_kernel32.CreateFileMappingW.restype = ctypes.c_void_p
_kernel32.CreateFileMappingW.argtypes = (
    *(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32),
    ctypes.c_wchar_p,
)
_advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
_advapi32.SetSecurityInfo.restype = ctypes.c_uint32
_advapi32.SetSecurityInfo.argtypes = (
    *(ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32),
    *(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p),
)
_SE_KERNEL_OBJECT = 6
_DACL_SECURITY_INFORMATION = 4


@pytest.fixture
def raw() -> Iterator[int]:
    """An unnamed section with the backend's DACL, still holding its creation handle."""
    handle = win32.create_file_mapping(10, win32.PAGE_READWRITE, win32.OWNER_RIGHTS_READ_CONTROL_SD)
    yield handle
    win32.close_handle(handle)


def _read(handle: int, access: int, length: int) -> bytes:
    address = win32.map_view(handle, access, 0, length)
    try:
        return ctypes.string_at(address, length)
    finally:
        win32.unmap_view(address)


def test_unnamed_section_is_an_anonymous_non_inheritable_section(raw: int) -> None:
    assert win32.object_type_name(raw) == "Section"
    assert win32.handle_flags(raw) & win32.HANDLE_FLAG_INHERIT == 0
    attributes, size = win32.query_section(raw)
    assert attributes & SEC_COMMIT  # pagefile-backed, committed in full
    assert not attributes & (win32.SEC_FILE | win32.SEC_IMAGE)
    assert size >= 10


def test_section_size_is_whole_pages(raw: int) -> None:
    # Wine keeps the size rounded up to pages: 10 bytes read back as 4096 (the same
    # through NtQuerySection and VirtualQuery).  Windows may keep the exact size.
    size = win32.query_section(raw)[1]
    assert size in (10, PAGE)
    if _backend.UNDER_WINE:
        assert size == PAGE
    address = win32.map_view(raw, win32.FILE_MAP_READ, 0, 0)  # 0: the whole section
    try:
        assert win32.region_size(address) == PAGE
    finally:
        win32.unmap_view(address)


def test_views_share_the_pages(raw: int) -> None:
    writer = win32.map_view(raw, win32.FILE_MAP_WRITE, 0, 10)
    try:
        ctypes.memmove(writer, b"hello", 5)
        assert _read(raw, win32.FILE_MAP_READ, 5) == b"hello"
    finally:
        win32.unmap_view(writer)


def test_view_of_a_large_section_at_an_offset_past_4_gib() -> None:
    section = win32.create_file_mapping(5 << 30, win32.PAGE_READWRITE, None)
    try:
        assert win32.query_section(section)[1] == 5 << 30
        address = win32.map_view(section, win32.FILE_MAP_WRITE, 4 << 30, mmap.ALLOCATIONGRANULARITY)
        try:
            ctypes.memmove(address, b"far", 3)
            assert win32.region_size(address) == mmap.ALLOCATIONGRANULARITY
        finally:
            win32.unmap_view(address)
    finally:
        win32.close_handle(section)


def test_section_cannot_be_mapped_past_its_end(raw: int) -> None:
    with pytest.raises(OSError) as caught:
        win32.map_view(raw, win32.FILE_MAP_READ, 0, 2 * PAGE)
    assert caught.value.winerror == ERROR_ACCESS_DENIED


def test_section_cannot_be_extended() -> None:
    # NtExtendSection needs SECTION_EXTEND_SIZE, which no backend handle has; Wine 8 does
    # not even export the call.
    ntdll = ctypes.WinDLL("ntdll")
    if not hasattr(ntdll, "NtExtendSection"):
        assert _backend.UNDER_WINE
        return
    ntdll.NtExtendSection.restype = ctypes.c_int32
    ntdll.NtExtendSection.argtypes = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64))
    section = win32.create_file_mapping(PAGE, win32.PAGE_READWRITE, None)
    handle = win32.duplicate_handle(section, RW, close_source=True)
    try:
        assert ntdll.NtExtendSection(handle, ctypes.byref(ctypes.c_int64(1 << 20))) < 0
        assert win32.query_section(handle)[1] == PAGE
    finally:
        win32.close_handle(handle)


def test_read_only_handle_cannot_map_for_writing(raw: int) -> None:
    read_only = win32.duplicate_handle(raw, RO)
    try:
        assert win32.granted_access(read_only) == RO
        with pytest.raises(OSError) as caught:
            win32.map_view(read_only, win32.FILE_MAP_WRITE, 0, 0)
        assert caught.value.winerror == ERROR_ACCESS_DENIED
        assert _read(read_only, win32.FILE_MAP_READ, 1) == b"\0"
    finally:
        win32.close_handle(read_only)


def test_read_only_handle_maps_a_private_copy(raw: int) -> None:
    read_only = win32.duplicate_handle(raw, RO)
    copy = win32.map_view(read_only, win32.FILE_MAP_COPY, 0, 0)
    try:
        ctypes.memmove(copy, b"mine", 4)
        assert ctypes.string_at(copy, 4) == b"mine"
        assert _read(raw, win32.FILE_MAP_READ, 4) == b"\0" * 4
    finally:
        win32.unmap_view(copy)
        win32.close_handle(read_only)


def test_dacl_keeps_a_read_only_handle_read_only(raw: int) -> None:
    read_only = win32.duplicate_handle(raw, RO)
    try:
        with pytest.raises(OSError) as caught:
            win32.duplicate_handle(read_only, RW)
        assert caught.value.winerror == ERROR_ACCESS_DENIED
    finally:
        win32.close_handle(read_only)


def test_without_a_dacl_a_read_only_handle_can_be_upgraded() -> None:
    # Why the backend gives every section a DACL: with none, DuplicateHandle grants any
    # access asked (crbug.com/338538).
    section = win32.create_file_mapping(PAGE, win32.PAGE_READWRITE, None)
    read_only = win32.duplicate_handle(section, RO, close_source=True)
    try:
        upgraded = win32.duplicate_handle(read_only, RW)
        assert win32.granted_access(upgraded) == RW
        win32.close_handle(upgraded)
    finally:
        win32.close_handle(read_only)


@pytest.mark.xfail(
    _backend.UNDER_WINE,
    reason="Wine grants an object's owner every standard right, WRITE_DAC included, "
    "and does not honour the OWNER RIGHTS ACE that takes it away on Windows",
    strict=True,
)
def test_read_only_handle_cannot_get_write_dac(raw: int) -> None:
    read_only = win32.duplicate_handle(raw, RO)
    try:
        with pytest.raises(OSError) as caught:
            win32.duplicate_handle(read_only, WRITE_DAC)
        assert caught.value.winerror == ERROR_ACCESS_DENIED
    finally:
        win32.close_handle(read_only)


def test_write_dac_is_a_way_back_to_write_access(raw: int) -> None:
    # What WRITE_DAC allows, and so why no backend handle has it: set a NULL DACL (every
    # access to everyone), then upgrade a read-only handle.
    read_only = win32.duplicate_handle(raw, RO)
    try:
        dac_writer = win32.duplicate_handle(raw, WRITE_DAC)
        try:
            null_dacl = _advapi32.SetSecurityInfo(
                dac_writer, _SE_KERNEL_OBJECT, _DACL_SECURITY_INFORMATION, None, None, None, None
            )
            assert null_dacl == 0
        finally:
            win32.close_handle(dac_writer)
        upgraded = win32.duplicate_handle(read_only, RW)
        assert win32.granted_access(upgraded) == RW
        win32.close_handle(upgraded)
    finally:
        win32.close_handle(read_only)


def test_object_type_names_tell_sections_from_other_objects(tmp_path: Path) -> None:
    with (tmp_path / "file").open("wb+") as file:
        file.write(b"x" * PAGE)
        file.flush()
        file_handle = msvcrt.get_osfhandle(file.fileno())
        assert win32.object_type_name(file_handle) == "File"
        mapped = _kernel32.CreateFileMappingW(file_handle, None, win32.PAGE_READWRITE, 0, 0, None)
        assert mapped, ctypes.get_last_error()
        try:
            assert win32.object_type_name(mapped) == "Section"
            assert win32.query_section(mapped)[0] & win32.SEC_FILE
        finally:
            win32.close_handle(mapped)


def test_closed_handle_is_invalid(raw: int) -> None:
    copy = win32.duplicate_handle(raw, None)
    win32.close_handle(copy)
    with pytest.raises(OSError) as caught:
        win32.object_type_name(copy)
    assert caught.value.winerror == ERROR_INVALID_HANDLE


def test_mmap_cannot_take_a_section_handle(raw: int) -> None:
    # mmap.mmap wants a C runtime descriptor of a file; even a descriptor wrapping a
    # section handle will not do (it calls GetFileSize and CreateFileMapping on it).
    copy = win32.duplicate_handle(raw, None)
    descriptor = msvcrt.open_osfhandle(copy, os.O_RDWR)  # the C runtime owns copy now
    try:
        with pytest.raises(OSError):
            mmap.mmap(descriptor, 10)
    finally:
        os.close(descriptor)


# A child judges with raw calls whether the handle named by argv[1] opens the memory.
_PEEK = """
    import ctypes, sys
    import tests.windows._backend
    from anonshm import _win32 as win32
    handle = int(sys.argv[1])
    try:
        kind = win32.object_type_name(handle)
        flags = win32.handle_flags(handle)
        address = win32.map_view(handle, win32.FILE_MAP_WRITE, 0, 0)
    except OSError as exc:
        print("refused", exc.winerror)
    else:
        print(kind, flags, ctypes.string_at(address, 6).decode("latin-1"))
        ctypes.memmove(address, b"child!", 6)
"""


@pytest.fixture
def marked(raw: int) -> Iterator[tuple[int, int]]:
    """``raw`` with b"parent" written at its start: (its inheritable duplicate, a view)."""
    address = win32.map_view(raw, win32.FILE_MAP_WRITE, 0, 0)
    ctypes.memmove(address, b"parent", 6)
    inheritable = win32.duplicate_handle(raw, None, inheritable=True)
    yield inheritable, address
    win32.close_handle(inheritable)
    win32.unmap_view(address)


def _peek(
    handle: int, startupinfo: subprocess.STARTUPINFO | None = None, *, close_fds: bool = True
) -> list[str]:
    argv = _helpers.child(_PEEK, str(handle))
    return _helpers.run(argv, startupinfo, close_fds=close_fds).split()


def test_handle_list_passes_exactly_that_handle_at_the_same_value(
    raw: int, marked: tuple[int, int]
) -> None:
    inheritable, address = marked
    assert win32.handle_flags(inheritable) & win32.HANDLE_FLAG_INHERIT
    info = subprocess.STARTUPINFO(lpAttributeList={"handle_list": [inheritable]})
    assert _peek(inheritable, info) == ["Section", "1", "parent"]
    assert ctypes.string_at(address, 6) == b"child!"
    # Not the memory's own (non-inheritable) handle: its value is nothing there.
    assert _peek(raw, info)[0] != "Section"


def test_child_started_without_the_handle_cannot_use_its_value(marked: tuple[int, int]) -> None:
    inheritable, address = marked
    # Started while the inheritable duplicate exists, but not handed it.
    assert "parent" not in _peek(inheritable)
    assert ctypes.string_at(address, 6) == b"parent"


def test_close_fds_false_hands_a_child_every_inheritable_handle(marked: tuple[int, int]) -> None:
    # Why an inheritable duplicate must live only while its own child starts:
    # subprocess with close_fds=False (and os.system, os.spawn*) inherit them all.
    inheritable, _ = marked
    assert _peek(inheritable, close_fds=False)[0] == "Section"


def test_non_inheritable_handle_in_handle_list_is_not_passed(raw: int) -> None:
    # Windows refuses such a list (ERROR_INVALID_PARAMETER); Wine starts the child
    # without the handle.
    info = subprocess.STARTUPINFO(lpAttributeList={"handle_list": [raw]})
    try:
        seen = _peek(raw, info)
    except OSError:
        assert not _backend.UNDER_WINE
    else:
        assert seen[0] != "Section"
