"""MemoryMap: windows, buffers, protections, deferred unmapping, sharing with a fork."""

from __future__ import annotations

import gc
import mmap
import os
import sys

import pytest

from anonshm import AnonymousMemory, MemoryMap, Protection
from tests.conftest import file_id, maps_of, open_fds

PAGE = mmap.PAGESIZE


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, None), (1, 10), (PAGE - 1, 2), (PAGE, PAGE), (PAGE + 7, None), (3 * PAGE - 1, 1)],
    ids=str,
)
def test_any_window_maps_exactly_those_bytes(offset: int, length: int | None) -> None:
    size = 3 * PAGE
    pattern = bytes(i % 251 for i in range(size))
    with AnonymousMemory(size) as mem:
        with mem.map() as whole:
            whole[:] = pattern
        with mem.map(offset, length) as view:
            end = size if length is None else offset + length
            assert view.buf.tobytes() == pattern[offset:end]
            assert len(view) == end - offset
            assert view.offset == offset
            view[0] = 0xFF
        with mem.map(offset, 1) as check:
            assert check[0] == 0xFF


@pytest.mark.parametrize(
    ("offset", "length"),
    [(-1, 1), (0, 0), (100, None), (99, 2), (0, 101), (101, 1), (50, -1)],
    ids=str,
)
def test_windows_outside_the_memory_or_empty_are_refused(offset: int, length: int | None) -> None:
    with AnonymousMemory(100) as mem, pytest.raises(ValueError, match="outside the memory"):
        mem.map(offset, length)


@pytest.mark.parametrize(("offset", "length"), [(1.0, None), ("0", None), (0, 1.5), (True, 1)])
def test_window_of_the_wrong_type_is_a_type_error(offset: object, length: object) -> None:
    with AnonymousMemory(100) as mem, pytest.raises(TypeError):
        mem.map(offset, length)  # type: ignore[arg-type]


def test_buf_is_one_memoryview_of_exactly_the_window() -> None:
    with AnonymousMemory(100) as mem, mem.map(10, 20) as view:
        assert view.buf is view.buf
        assert isinstance(view.buf, memoryview)
        assert view.buf.nbytes == 20
        assert view.buf.format == "B"
        assert not view.buf.readonly


def test_indexing_and_slice_assignment() -> None:
    with AnonymousMemory(16) as mem, mem.map() as view:
        view[0] = 65
        view[1:4] = b"BCD"
        view[-1] = 90
        assert view[0] == 65
        assert view[:4] == b"ABCD"
        assert view[-1] == 90
        with pytest.raises(ValueError):
            view[0:2] = b"toolong"
        with pytest.raises(IndexError):
            view[16] = 1


def test_read_only_map_refuses_writes() -> None:
    with AnonymousMemory(16) as mem, mem.map(protection=Protection.READ_ONLY) as view:
        assert view.buf.readonly
        with pytest.raises(TypeError):
            view[0] = 1
        with pytest.raises(TypeError):
            view.buf[0:1] = b"x"


def test_write_copy_writes_stay_private_to_that_map() -> None:
    with AnonymousMemory(PAGE) as mem:
        with mem.map() as shared:
            shared[:5] = b"first"
        with mem.map(protection=Protection.WRITE_COPY) as private, mem.map() as other:
            private[:5] = b"PRIVY"
            assert private[:5] == b"PRIVY"
            assert other[:5] == b"first"
            other[5:10] = b"later"


def test_write_copy_of_a_read_only_memory_is_allowed() -> None:
    with AnonymousMemory(16) as mem, mem.duplicate(protection=Protection.READ_ONLY) as ro:
        with ro.map(protection=Protection.WRITE_COPY) as view:
            view[0] = 1
            assert view[0] == 1
        with mem.map() as check:
            assert check[0] == 0


def test_read_write_map_of_a_read_only_memory_is_a_permission_error() -> None:
    for protection in (Protection.READ_ONLY, Protection.WRITE_COPY):
        with AnonymousMemory(16, protection=protection) as mem:
            with pytest.raises(PermissionError, match=protection.name):
                mem.map(protection=Protection.READ_WRITE)
            with mem.map() as view:
                assert view.protection is protection


def test_close_is_idempotent_and_use_after_close_is_a_value_error() -> None:
    with AnonymousMemory(16) as mem:
        view = mem.map()
        view.close()
        view.close()
        assert view.closed
        for use in (lambda: view.buf, lambda: len(view), lambda: view[0], view.flush):
            with pytest.raises(ValueError, match="closed"):
                use()
        with pytest.raises(ValueError, match="closed"):
            view[0] = 1
        with pytest.raises(ValueError, match="closed"), view:
            pass
        assert "closed" in repr(view)


def test_exported_slices_keep_the_pages_until_released() -> None:
    with AnonymousMemory(PAGE, name="deferred") as mem:
        identity = file_id(mem.fileno())
        view = mem.map()
        view[:4] = b"kept"
        part = view.buf[:4]
    # Neither the map's close nor the memory's raised: the slice still reads.
    assert view.closed
    assert bytes(part) == b"kept"
    assert maps_of(identity)
    part.release()
    del part
    gc.collect()
    assert not maps_of(identity)


def test_a_memoryview_exported_from_buf_defers_the_unmap() -> None:
    with AnonymousMemory(PAGE, name="exported") as mem:
        identity = file_id(mem.fileno())
        view = mem.map()
        derived = memoryview(view.buf)  # an export of buf itself, as numpy makes
        view.close()
        derived[0] = 42
        assert derived[0] == 42
    assert maps_of(identity)
    del derived
    gc.collect()
    assert not maps_of(identity)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ is Python >= 3.12")
def test_the_map_itself_is_a_buffer() -> None:
    with AnonymousMemory(8) as mem, mem.map(2, 4) as view:
        view[:4] = b"abcd"
        with memoryview(view) as direct:  # type: ignore[arg-type,unused-ignore]
            assert direct.tobytes() == b"abcd"
            assert bytes(view) == b"abcd"  # type: ignore[call-overload,unused-ignore]


def test_populate_and_hugepages_map_the_same_memory() -> None:
    with AnonymousMemory(4 * PAGE) as mem:
        with mem.map() as view:
            view[-1] = 9
        with mem.map(populate=True, hugepages=True) as hinted:
            assert hinted[-1] == 9


def test_map_repr() -> None:
    with AnonymousMemory(10, name="r") as mem, mem.map(1, 2) as view:
        assert repr(view) == "<MemoryMap 'r' offset=1 length=2 protection=READ_WRITE open>"
        assert isinstance(view, MemoryMap)


def test_a_forked_child_sees_the_parents_writes_and_the_parent_sees_its_answer() -> None:
    with AnonymousMemory(PAGE) as mem, mem.map() as view:
        view[:5] = b"hello"
        pid = os.fork()
        if pid == 0:  # the child: only os._exit, never return into pytest
            status = 0 if view[:5] == b"hello" else 1
            view[5:10] = b"world"
            os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert view[:10] == b"helloworld"


def test_a_map_costs_a_descriptor_only_before_python_3_13() -> None:
    # Python < 3.13's mmap keeps a duplicate of the descriptor; 3.13 lets us drop it.
    with AnonymousMemory(PAGE) as mem:
        before = open_fds()
        with mem.map():
            extra = open_fds() - before
        assert len(extra) == (0 if sys.version_info >= (3, 13) else 1)
        assert open_fds() == before


def test_populate_of_a_write_copy_map_copies_nothing() -> None:
    # MAP_POPULATE would write-fault a private map, copying every page: a page not
    # yet written must still show what others write to the memory later.
    with AnonymousMemory(4 * PAGE) as mem, mem.map() as shared:
        with mem.map(protection=Protection.WRITE_COPY, populate=True) as private:
            shared[PAGE : PAGE + 5] = b"later"
            assert private[PAGE : PAGE + 5] == b"later"


def test_slice_assignment_of_the_wrong_length_says_so() -> None:
    with AnonymousMemory(16) as mem, mem.map() as view:
        with pytest.raises(ValueError, match="3 bytes to a window of 2 bytes"):
            view[0:2] = b"abc"
