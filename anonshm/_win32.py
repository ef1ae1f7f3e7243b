"""The Win32 and NT calls of the Windows backend, through ctypes, as typed functions.

Each wrapper makes one call and turns its failure into ``OSError`` (with ``winerror``
set, as ``ctypes.WinError`` makes it); nothing here decides anything.  Handles are plain
ints, as ``socket.fileno()`` and ``_winapi`` give them.

The module imports on every platform (pytest's doctest collection imports every module
of the package), but only Windows binds the DLLs; type checkers read it as Windows-only:
the assert below ends the module for them on any other platform, as trio does.
"""

import ctypes
import struct
import sys

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
assert sys.platform == "win32" or not TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "FILE_MAP_COPY",
    "FILE_MAP_READ",
    "FILE_MAP_WRITE",
    "HANDLE_FLAG_INHERIT",
    "OWNER_RIGHTS_READ_CONTROL_SD",
    "PAGE_READWRITE",
    "SECTION_QUERY",
    "close_handle",
    "create_file_mapping",
    "current_process",
    "duplicate_handle",
    "granted_access",
    "handle_flags",
    "map_view",
    "object_type_name",
    "query_section",
    "region_size",
    "unmap_view",
]

# Section access rights (winnt.h).  FILE_MAP_COPY is SECTION_QUERY's value: to
# MapViewOfFile it means a copy-on-write view, in a handle's access mask the right to
# query the section (its size, NtQuerySection).
SECTION_QUERY: "Final" = 0x0001
SECTION_MAP_WRITE: "Final" = 0x0002
SECTION_MAP_READ: "Final" = 0x0004
FILE_MAP_COPY: "Final" = 0x0001
FILE_MAP_WRITE: "Final" = SECTION_MAP_WRITE
FILE_MAP_READ: "Final" = SECTION_MAP_READ
READ_CONTROL: "Final" = 0x0002_0000
PAGE_READWRITE: "Final" = 0x04
SEC_IMAGE: "Final" = 0x0100_0000
SEC_FILE: "Final" = 0x0080_0000
HANDLE_FLAG_INHERIT: "Final" = 0x1
DUPLICATE_CLOSE_SOURCE: "Final" = 0x1
DUPLICATE_SAME_ACCESS: "Final" = 0x2
_INVALID_HANDLE_VALUE: "Final" = -1
_OBJECT_BASIC_INFORMATION: "Final" = 0  # NtQueryObject's information classes
_OBJECT_TYPE_INFORMATION: "Final" = 2
_SECTION_BASIC_INFORMATION: "Final" = 0
_TYPE_INFO_BYTES: "Final" = 512  # PUBLIC_OBJECT_TYPE_INFORMATION and the name after it


def _owner_rights_sd() -> bytes:
    # A self-relative security descriptor whose DACL has one ACE: OWNER RIGHTS
    # (S-1-3-4) may READ_CONTROL.  Any access not granted by the DACL is refused, so a
    # read-only handle cannot be duplicated into a writable one (with no DACL at all,
    # DuplicateHandle grants any access asked: crbug.com/338538).  The ACE replaces the
    # READ_CONTROL | WRITE_DAC that Windows (>= Vista) grants an object's owner
    # implicitly: with WRITE_DAC a holder of a read-only handle could rewrite the DACL,
    # then upgrade.  SDDL: "D:(A;;RC;;;OW)".
    sid = struct.pack("<BB6sI", 1, 1, b"\0\0\0\0\0\3", 4)
    ace = struct.pack("<BBHI", 0, 0, 8 + len(sid), READ_CONTROL) + sid  # ACCESS_ALLOWED
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(ace), 1, 0) + ace  # ACL_REVISION
    se_dacl_present, se_self_relative = 0x0004, 0x8000
    header = struct.pack("<BBHIIII", 1, 0, se_dacl_present | se_self_relative, 0, 0, 0, 20)
    return header + acl


OWNER_RIGHTS_READ_CONTROL_SD: "Final" = _owner_rights_sd()


class _SecurityAttributes(ctypes.Structure):
    _fields_ = (
        ("nLength", ctypes.c_uint32),
        ("lpSecurityDescriptor", ctypes.c_void_p),
        ("bInheritHandle", ctypes.c_int32),
    )


class _MemoryBasicInformation(ctypes.Structure):
    _fields_ = (
        ("BaseAddress", ctypes.c_void_p),
        ("AllocationBase", ctypes.c_void_p),
        ("AllocationProtect", ctypes.c_uint32),
        ("PartitionId", ctypes.c_uint16),
        ("RegionSize", ctypes.c_size_t),
        ("State", ctypes.c_uint32),
        ("Protect", ctypes.c_uint32),
        ("Type", ctypes.c_uint32),
    )


class _SectionBasicInformation(ctypes.Structure):
    _fields_ = (
        ("BaseAddress", ctypes.c_void_p),
        ("Attributes", ctypes.c_uint32),
        ("Size", ctypes.c_int64),  # LARGE_INTEGER
    )


class _ObjectBasicInformation(ctypes.Structure):  # PUBLIC_OBJECT_BASIC_INFORMATION
    _fields_ = (
        ("Attributes", ctypes.c_uint32),
        ("GrantedAccess", ctypes.c_uint32),
        ("HandleCount", ctypes.c_uint32),
        ("PointerCount", ctypes.c_uint32),
        ("Reserved", ctypes.c_uint32 * 10),
    )


class _UnicodeString(ctypes.Structure):
    _fields_ = (
        ("Length", ctypes.c_uint16),  # in bytes
        ("MaximumLength", ctypes.c_uint16),
        ("Buffer", ctypes.c_void_p),
    )


if sys.platform == "win32":
    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _ntdll = ctypes.WinDLL("ntdll")

    def _bind(
        dll: ctypes.WinDLL, name: str, restype: type, *argtypes: type
    ) -> "ctypes._NamedFuncPointer":
        function = getattr(dll, name)
        function.restype = restype
        function.argtypes = argtypes
        return function  # type: ignore[no-any-return]

    _HANDLE = ctypes.c_void_p
    _DWORD = ctypes.c_uint32
    _BOOL = ctypes.c_int32
    _NTSTATUS = ctypes.c_int32
    _CloseHandle = _bind(_kernel32, "CloseHandle", _BOOL, _HANDLE)
    _CreateFileMappingW = _bind(
        _kernel32,
        "CreateFileMappingW",
        _HANDLE,
        *(_HANDLE, ctypes.POINTER(_SecurityAttributes), _DWORD, _DWORD, _DWORD, ctypes.c_wchar_p),
    )
    _DuplicateHandle = _bind(
        _kernel32,
        "DuplicateHandle",
        _BOOL,
        *(_HANDLE, _HANDLE, _HANDLE, ctypes.POINTER(_HANDLE), _DWORD, _BOOL, _DWORD),
    )
    _GetCurrentProcess = _bind(_kernel32, "GetCurrentProcess", _HANDLE)
    _GetHandleInformation = _bind(
        _kernel32, "GetHandleInformation", _BOOL, _HANDLE, ctypes.POINTER(_DWORD)
    )
    _MapViewOfFile = _bind(
        _kernel32,
        "MapViewOfFile",
        ctypes.c_void_p,
        _HANDLE,
        _DWORD,
        _DWORD,
        _DWORD,
        ctypes.c_size_t,
    )
    _UnmapViewOfFile = _bind(_kernel32, "UnmapViewOfFile", _BOOL, ctypes.c_void_p)
    _VirtualQuery = _bind(
        _kernel32,
        "VirtualQuery",
        ctypes.c_size_t,
        *(ctypes.c_void_p, ctypes.POINTER(_MemoryBasicInformation), ctypes.c_size_t),
    )
    _NtQueryObject = _bind(
        _ntdll,
        "NtQueryObject",
        _NTSTATUS,
        *(
            _HANDLE,
            ctypes.c_uint32,
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_uint32),
        ),
    )
    _NtQuerySection = _bind(
        _ntdll,
        "NtQuerySection",
        _NTSTATUS,
        *(
            _HANDLE,
            ctypes.c_uint32,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
        ),
    )
    _RtlNtStatusToDosError = _bind(_ntdll, "RtlNtStatusToDosError", ctypes.c_uint32, _NTSTATUS)


def _last_error() -> OSError:
    return ctypes.WinError(ctypes.get_last_error())


def _check_status(status: int) -> None:
    if status < 0:  # an NTSTATUS with the error bits set
        error = _RtlNtStatusToDosError(status)
        raise ctypes.WinError(error)


def _check_handle(handle: int | None) -> int:
    # A HANDLE in ctypes is a c_void_p: NULL comes back as None.
    if not handle:
        raise _last_error()
    return handle


def current_process() -> int:
    """The pseudo-handle of this process (-1 as a HANDLE); never closed."""
    return _check_handle(_GetCurrentProcess())


def create_file_mapping(size: int, protect: int, security_descriptor: bytes | None) -> int:
    """A new unnamed, non-inheritable, pagefile-backed section of ``size`` bytes."""
    attributes = _SecurityAttributes(ctypes.sizeof(_SecurityAttributes), None, 0)
    keep = None
    if security_descriptor is not None:
        keep = ctypes.create_string_buffer(security_descriptor, len(security_descriptor))
        attributes.lpSecurityDescriptor = ctypes.addressof(keep)
    handle = _CreateFileMappingW(
        _INVALID_HANDLE_VALUE,
        ctypes.byref(attributes),
        protect,
        size >> 32,
        size & 0xFFFF_FFFF,
        None,
    )
    del keep
    return _check_handle(handle)


def duplicate_handle(
    handle: int, access: int | None, *, inheritable: bool = False, close_source: bool = False
) -> int:
    """A new handle in this process to ``handle``'s object (``access=None``: the same access).

    With ``close_source`` the source handle is closed whatever the outcome (Windows
    closes it even when the call fails).
    """
    options = (DUPLICATE_SAME_ACCESS if access is None else 0) | (
        DUPLICATE_CLOSE_SOURCE if close_source else 0
    )
    process = current_process()
    new = _HANDLE()
    if not _DuplicateHandle(
        process, handle, process, ctypes.byref(new), access or 0, inheritable, options
    ):
        raise _last_error()
    return _check_handle(new.value)


def close_handle(handle: int) -> None:
    """Close one handle of this process."""
    if not _CloseHandle(handle):
        raise _last_error()


def handle_flags(handle: int) -> int:
    """``GetHandleInformation``: HANDLE_FLAG_INHERIT and HANDLE_FLAG_PROTECT_FROM_CLOSE."""
    flags = _DWORD()
    if not _GetHandleInformation(handle, ctypes.byref(flags)):
        raise _last_error()
    return flags.value


def granted_access(handle: int) -> int:
    """The access mask this handle was opened with (``NtQueryObject``)."""
    info = _ObjectBasicInformation()
    _check_status(
        _NtQueryObject(
            handle, _OBJECT_BASIC_INFORMATION, ctypes.byref(info), ctypes.sizeof(info), None
        )
    )
    return int(info.GrantedAccess)


def object_type_name(handle: int) -> str:
    """The kernel's name for the type of ``handle``'s object: "Section", "File", ..."""
    buffer = ctypes.create_string_buffer(_TYPE_INFO_BYTES)
    _check_status(_NtQueryObject(handle, _OBJECT_TYPE_INFORMATION, buffer, _TYPE_INFO_BYTES, None))
    name = _UnicodeString.from_buffer(buffer)
    if not name.Buffer:
        return ""
    return ctypes.wstring_at(name.Buffer, name.Length // 2)


def query_section(handle: int) -> tuple[int, int]:
    """``(attributes, size)`` of a section (``NtQuerySection``; needs SECTION_QUERY)."""
    info = _SectionBasicInformation()
    _check_status(
        _NtQuerySection(
            handle, _SECTION_BASIC_INFORMATION, ctypes.byref(info), ctypes.sizeof(info), None
        )
    )
    return int(info.Attributes), int(info.Size)


def map_view(handle: int, access: int, offset: int, length: int) -> int:
    """Map ``length`` bytes of a section from ``offset`` (64 KiB-aligned); the address."""
    address = _MapViewOfFile(handle, access, offset >> 32, offset & 0xFFFF_FFFF, length)
    return _check_handle(address)


def unmap_view(address: int) -> None:
    """Unmap the view that starts at ``address``."""
    if not _UnmapViewOfFile(address):
        raise _last_error()


def region_size(address: int) -> int:
    """How many bytes from ``address`` on share its pages' state (``VirtualQuery``)."""
    info = _MemoryBasicInformation()
    if not _VirtualQuery(address, ctypes.byref(info), ctypes.sizeof(info)):
        raise _last_error()
    return int(info.RegionSize) - (address - int(info.BaseAddress or 0))
