"""Windows' sections, read-only handles, views and handle inheritance, in plain calls.

Functions over handles (ints, as ``fileno()`` gives them on Windows) that ``_windows``,
the backend, puts behind the backend interface; checks and bookkeeping live in the
public classes.  What Windows enforces, and how:

* A memory is an unnamed pagefile-backed section (``CreateFileMappingW`` with
  ``INVALID_HANDLE_VALUE``): no name any process could open, committed in full at
  creation (a full commit limit fails here, not on a later write), never resized
  (handles lack ``SECTION_EXTEND_SIZE``).  Its handles are never inheritable.
* Handles carry only the rights they need: ``FILE_MAP_READ | FILE_MAP_WRITE |
  SECTION_QUERY`` for a writable memory, ``FILE_MAP_READ | SECTION_QUERY`` for a
  read-only one; none has ``WRITE_DAC``.
* The section's DACL grants no access (and replaces the owner's implicit
  ``WRITE_DAC`` with nothing more than ``READ_CONTROL``), so ``DuplicateHandle`` cannot
  add rights a handle lacks: a read-only handle stays read-only in whatever process
  holds it.  Writable handles handed out earlier keep their rights.  (Wine refuses the
  upgrade too, but lets the owner take ``WRITE_DAC``, rewrite the DACL, then upgrade:
  it does not honour OWNER RIGHTS.)

The tokens are NSPR's Windows tokens: ``"<prot>:<handle>:<dwAccess>"`` in decimal,
``dwAccess`` the ``FILE_MAP_*`` value ``PR_CreateFileMap`` records for the protection
(read 4, write 2, copy 1) and passes to ``MapViewOfFile``.
"""

import ctypes
import mmap
import sys
from _weakref import ref

from . import _win32, _wire
from ._wire import READ_ONLY

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
assert sys.platform == "win32" or not TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterable
    from typing import Final

__all__ = [
    "DEFAULT_STRATEGY",
    "FIXED_SIZE",
    "MAP_ACCESS",
    "NAME",
    "READ_ONLY_ACCESS",
    "READ_WRITE_ACCESS",
    "child_startupinfo",
    "close",
    "create",
    "duplicate",
    "format_token",
    "inheritable_duplicate_for_child",
    "inspect",
    "map",
    "parse_token",
    "read_at",
    "reopen_readonly",
    "write_at",
]

NAME: "Final" = "windows"
DEFAULT_STRATEGY: "Final" = "CreateFileMappingW"
FIXED_SIZE: "Final" = True  # a pagefile-backed section never changes size
# MapViewOfFile's access for each protection (READ_ONLY, READ_WRITE, WRITE_COPY): what
# NSPR records as dwAccess.  FILE_MAP_WRITE alone maps read-write.
MAP_ACCESS: "Final" = _wire.WINDOWS_MAP_ACCESS
# SECTION_QUERY (NtQuerySection: the size) in both, as Chromium's handles have it.
READ_WRITE_ACCESS: "Final" = _win32.FILE_MAP_READ | _win32.FILE_MAP_WRITE | _win32.SECTION_QUERY
READ_ONLY_ACCESS: "Final" = _win32.FILE_MAP_READ | _win32.SECTION_QUERY
_GRANULARITY: "Final" = mmap.ALLOCATIONGRANULARITY  # views start on a multiple of it
_SECTION_TYPE: "Final" = "Section"
_NOT_ANONYMOUS: "Final" = _win32.SEC_IMAGE | _win32.SEC_FILE
_PYBUF_WRITABLE: "Final" = 0x0001  # inspect.BufferFlags.WRITABLE, without inspect

# Views to unmap, by the id of the weak reference to the ctypes array that exports each
# (ctypes arrays do not hash): the array goes when the last buffer made from it
# (memoryviews, numpy arrays) is released, and its reference's callback unmaps.
_views: "dict[int, tuple[ref[ctypes.Array[ctypes.c_char]], int]]" = {}


def _unmap_view(
    watcher: "ref[ctypes.Array[ctypes.c_char]]",
    _views: "dict[int, tuple[ref[ctypes.Array[ctypes.c_char]], int]]" = _views,
) -> None:
    # The default argument keeps the registry reachable during interpreter teardown.
    entry = _views.pop(id(watcher), None)
    if entry is not None:
        _win32.unmap_view(entry[1])


def create(size: int) -> int:
    """A new read-write, non-inheritable handle of ``size`` zero bytes that no name reaches.

    Raises:
        OSError: Windows refused (``ERROR_COMMITMENT_LIMIT`` when the memory cannot be
            committed: the page file is full).
    """
    section = _win32.create_file_mapping(
        size, _win32.PAGE_READWRITE, _win32.OWNER_RIGHTS_READ_CONTROL_SD
    )
    # The creation handle has every standard right (WRITE_DAC, WRITE_OWNER, DELETE, ...):
    # keep only the section rights.  DUPLICATE_CLOSE_SOURCE closes it even on failure.
    return _win32.duplicate_handle(section, READ_WRITE_ACCESS, close_source=True)


def reopen_readonly(handle: int) -> int:
    """A new non-inheritable handle of the same section that can only be mapped for reading."""
    return _win32.duplicate_handle(handle, READ_ONLY_ACCESS)


def duplicate(handle: int) -> int:
    """A new non-inheritable handle of the same section with the same access."""
    return _win32.duplicate_handle(handle, None)


def close(handle: int) -> None:
    """Close this process's ``handle``; the section lives on while any process holds one."""
    _win32.close_handle(handle)


def inspect(handle: int) -> tuple[int, bool]:
    """``(size, writable)`` of the anonymous section that ``handle`` opens.

    The size is what the section records: Wine rounds it up to whole pages (4 KiB); a
    creator knows the exact size, an importer learns this one (NSPR's token has none).

    Raises:
        OSError: ``handle`` is not open (``winerror`` 6, ``ERROR_INVALID_HANDLE``).
        ValueError: it is open but not anonymous shared memory this process may map
            and measure: another kind of object, a section of a file or an image, or a
            handle without ``FILE_MAP_READ`` or ``SECTION_QUERY`` access.
    """
    kind = _win32.object_type_name(handle)
    if kind != _SECTION_TYPE:
        raise ValueError(f"handle {handle} is a {kind or 'nameless'} object, not a section")
    access = _win32.granted_access(handle)
    if not access & _win32.FILE_MAP_READ:
        raise ValueError(f"handle {handle} may not be mapped: it lacks FILE_MAP_READ access")
    if not access & _win32.SECTION_QUERY:
        raise ValueError(f"handle {handle} lacks SECTION_QUERY access: its size is unknown")
    attributes, size = _win32.query_section(handle)
    if attributes & _NOT_ANONYMOUS:
        raise ValueError(f"handle {handle} is a section of a file, not anonymous memory")
    return size, bool(access & _win32.FILE_MAP_WRITE)


if sys.version_info >= (3, 12):

    class _ReadOnlyWindow:
        """The exporter of a read-only map's buffers: it refuses to export a writable one.

        A ``memoryview.toreadonly()`` of the ctypes array would do, but its ``obj`` is
        that array, which exports writable buffers: a write through it would fault on
        the read-only pages and kill the process.
        """

        __slots__ = ("_view",)

        def __init__(self, view: memoryview) -> None:
            self._view = view

        def __buffer__(self, flags: int, /) -> memoryview:
            if flags & _PYBUF_WRITABLE:
                raise BufferError("a READ_ONLY map cannot be written")
            return self._view[:]  # its own export: released by __release_buffer__

        def __release_buffer__(self, view: memoryview, /) -> None:
            view.release()


def map(handle: int, offset: int, length: int, protection: int) -> memoryview:
    """Map ``length`` bytes of the section from ``offset``: a ``memoryview`` of exactly them.

    ``protection`` (0, 1, 2: READ_ONLY, READ_WRITE, WRITE_COPY) picks NSPR's access for
    ``MapViewOfFile``; a READ_ONLY view is a read-only ``memoryview`` and WRITE_COPY
    writes stay private to this view.  The window may start anywhere: the view starts
    at the allocation granularity (64 KiB) before it.  It is unmapped when the last
    buffer made from the returned ``memoryview`` (slices, numpy arrays) is released,
    never under one of them; callers have checked the window.

    Raises:
        OSError: Windows refused (``ERROR_ACCESS_DENIED``: the handle lacks the access
            this protection needs).
    """
    skew = offset % _GRANULARITY
    address = _win32.map_view(handle, MAP_ACCESS[protection], offset - skew, length + skew)
    try:
        window = (ctypes.c_char * length).from_address(address + skew)
        watcher = ref(window, _unmap_view)
        _views[id(watcher)] = (watcher, address)
    except BaseException:
        _win32.unmap_view(address)
        raise
    view = memoryview(window).cast("B")
    if protection != READ_ONLY:
        return view
    if sys.version_info >= (3, 12):
        return memoryview(_ReadOnlyWindow(view.toreadonly()))
    return view.toreadonly()  # Python 3.11: its .obj is the writable ctypes array


def write_at(handle: int, data: memoryview, offset: int) -> None:
    """Copy ``data`` (1-D bytes, at least one) into the section at ``offset``.

    Windows has no ``pwrite`` for a section: a view of just the pages involved is
    mapped for writing, filled and unmapped.  Callers have checked the window.
    """
    length = len(data)
    skew = offset % _GRANULARITY
    address = _win32.map_view(handle, _win32.FILE_MAP_WRITE, offset - skew, length + skew)
    try:
        memoryview((ctypes.c_char * length).from_address(address + skew)).cast("B")[:] = data
    finally:
        _win32.unmap_view(address)


def read_at(handle: int, length: int, offset: int) -> bytes:
    """``length`` bytes (at least one) of the section from ``offset``, as a copy."""
    skew = offset % _GRANULARITY
    address = _win32.map_view(handle, _win32.FILE_MAP_READ, offset - skew, length + skew)
    try:
        return ctypes.string_at(address + skew, length)
    finally:
        _win32.unmap_view(address)


def inheritable_duplicate_for_child(handle: int) -> int:
    """An inheritable duplicate of ``handle`` for one child, which gets the same value.

    Hand it to that child alone through :func:`child_startupinfo` and close it once
    the child is started.  Until then any ``CreateProcess`` that inherits every
    inheritable handle (``subprocess`` with ``close_fds=False``, ``os.system``,
    ``os.spawn*``) in another thread would give it to its child too; ``subprocess``'s
    default inherits only the handles it lists.
    """
    return _win32.duplicate_handle(handle, None, inheritable=True)


def child_startupinfo(
    handles: "Iterable[int]", startupinfo: "subprocess.STARTUPINFO | None" = None
) -> "subprocess.STARTUPINFO":
    """A ``STARTUPINFO`` whose handle list adds ``handles`` to what ``startupinfo`` lists.

    ``subprocess.Popen`` then lets the child inherit exactly the listed handles (and
    the standard handles it redirects).  ``startupinfo`` is copied, never changed:
    ``Popen`` rewrites the handle list of the one it is given.
    """
    import subprocess  # noqa: PLC0415 - only spawn pays for it, and spawn has it loaded

    info = subprocess.STARTUPINFO() if startupinfo is None else startupinfo.copy()
    listed = list(info.lpAttributeList.get("handle_list", ()))
    listed.extend(handle for handle in handles if handle not in listed)
    info.lpAttributeList = {**info.lpAttributeList, "handle_list": listed}
    return info


# NSPR's Windows tokens: the format lives with the other wire formats.
format_token = _wire.format_windows_token
parse_token = _wire.parse_windows_token
