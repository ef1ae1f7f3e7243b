"""AnonymousMemory.write() and read(): pwrite and pread, checked as map() is."""

from __future__ import annotations

import array
import os
import threading

import numpy as np
import pytest

from anonshm import AnonymousMemory, Protection
from tests.conftest import FEATURES, run_child


def test_write_returns_the_count_and_map_and_read_see_the_bytes(no_leaks: None) -> None:
    with AnonymousMemory(10_000, name="io") as mem:
        assert mem.write(b"hello", 4097) == 5
        assert mem.read(5, 4097) == b"hello"
        with mem.map() as view:
            assert bytes(view[4096:4103]) == b"\0hello\0"
            view[0:3] = b"abc"
        assert mem.read(3) == b"abc"
        assert mem.write(b"end", offset=9997) == 3
        assert mem.read(3, offset=9997) == b"end"


@pytest.mark.parametrize(
    "data",
    [
        bytearray(b"abcdefgh"),
        memoryview(b"abcdefgh"),
        array.array("B", b"abcdefgh"),
        np.frombuffer(b"abcdefgh", dtype=np.uint8).reshape(2, 4),  # 2-D, contiguous
        np.frombuffer(b"abcdefgh", dtype=np.uint16),  # items of two bytes
    ],
    ids=["bytearray", "memoryview", "array", "numpy-2d", "numpy-uint16"],
)
def test_write_takes_any_contiguous_buffer_as_its_bytes(data: object) -> None:
    with AnonymousMemory(16) as mem:
        assert mem.write(data, 2) == 8  # type: ignore[arg-type]
        assert mem.read(10) == b"\0\0abcdefgh"


def test_a_non_contiguous_buffer_is_written_in_c_order() -> None:
    grid = np.arange(16, dtype=np.uint8).reshape(4, 4)
    with AnonymousMemory(16) as mem:
        columns: object = grid[:, 1:3]  # numpy is a Buffer to mypy on 3.12+ only
        assert mem.write(columns) == 8  # type: ignore[arg-type]
        assert mem.read(8) == bytes([1, 2, 5, 6, 9, 10, 13, 14])
        assert mem.write(memoryview(b"abcdef")[::2], 8) == 3
        assert mem.read(3, 8) == b"ace"


def test_write_releases_the_buffer_it_was_given() -> None:
    data = bytearray(b"abc")
    with AnonymousMemory(8) as mem:
        mem.write(data)
        data.extend(b"d")  # BufferError while a view of it were still exported
        with pytest.raises(ValueError, match="4 bytes at offset 6"):
            mem.write(data, 6)
        data.extend(b"e")


def test_nothing_past_the_end_is_written_or_read_and_the_memory_never_grows() -> None:
    with AnonymousMemory(100) as mem:
        with pytest.raises(ValueError, match=r"cannot write 5 bytes at offset 96: .* 100 bytes"):
            mem.write(b"12345", 96)
        with pytest.raises(ValueError, match=r"cannot write 1 bytes at offset 100"):
            mem.write(b"x", 100)
        with pytest.raises(ValueError, match="offset -1"):
            mem.write(b"x", -1)
        with pytest.raises(ValueError, match=r"cannot read 5 bytes at offset 96: .* 100 bytes"):
            mem.read(5, 96)
        with pytest.raises(ValueError, match="cannot read -1 bytes"):
            mem.read(-1)
        with pytest.raises(ValueError, match="offset -1"):
            mem.read(1, -1)
        assert mem.read(4, 96) == bytes(4)  # nothing of the refused write landed
        assert mem.write(b"", 100) == 0
        assert mem.read(0, 100) == b""
        assert os.fstat(mem.fileno()).st_size == 100


def test_bad_argument_types_are_type_errors() -> None:
    with AnonymousMemory(8) as mem:
        with pytest.raises(TypeError, match="data must be a bytes-like object, not str"):
            mem.write("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="offset must be an int, not float"):
            mem.write(b"x", 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="n must be an int, not str"):
            mem.read("1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="offset must be an int, not bool"):
            mem.read(1, True)


@pytest.mark.parametrize("protection", [Protection.READ_ONLY, Protection.WRITE_COPY])
def test_a_memory_that_may_not_be_written_refuses(protection: Protection) -> None:
    with AnonymousMemory(8, name="ro", protection=protection) as mem:
        with pytest.raises(
            PermissionError, match=f"cannot write to 'ro': the memory is {protection.name}"
        ):
            mem.write(b"x")
        assert mem.read(8) == bytes(8)


@pytest.mark.skipif(not FEATURES.freeze, reason="this backend cannot freeze")
def test_a_frozen_memory_refuses_writes_here_and_through_other_handles() -> None:
    with AnonymousMemory(8, name="ice") as mem, mem.duplicate() as other:
        mem.write(b"before")
        mem.freeze()
        with pytest.raises(PermissionError, match="cannot write to 'ice': the memory is frozen"):
            mem.write(b"x")
        # The other handle still holds a read-write descriptor: the seal refuses (EPERM).
        with pytest.raises(PermissionError, match="cannot write to 'ice': the memory is frozen"):
            other.write(b"x")
        assert other.read(8) == b"before\0\0"


def test_a_closed_memory_refuses_both() -> None:
    mem = AnonymousMemory(8)
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        mem.write(b"x")
    with pytest.raises(ValueError, match="closed"):
        mem.read(1)


def test_a_close_in_another_thread_never_makes_a_write_land_elsewhere() -> None:
    # The writer borrows the descriptor: a close() meanwhile waits for it to be done,
    # so the number is never reused (by the pipes opened here) under a write.
    for _ in range(200):
        mem = AnonymousMemory(4096)
        started = threading.Event()

        def writer(mem: AnonymousMemory = mem, started: threading.Event = started) -> None:
            started.set()
            try:
                while True:
                    mem.write(b"x" * 4096)
            except ValueError:
                pass

        thread = threading.Thread(target=writer)
        thread.start()
        started.wait()
        mem.close()
        pipes = [os.pipe() for _ in range(4)]  # likely to take the number just freed
        thread.join()
        try:
            for r, _ in pipes:
                os.set_blocking(r, False)
                with pytest.raises(BlockingIOError):
                    os.read(r, 1)
        finally:
            for pair in pipes:
                for fd in pair:
                    os.close(fd)


@pytest.mark.slow  # 18 s here: 6 GiB of pages to allocate
def test_writes_and_reads_past_what_one_system_call_moves_are_whole() -> None:
    # Linux moves at most 2 GiB - 4 KiB per pwrite or pread: the rest must follow.
    # In a child: it needs about 6 GiB for a moment.
    code = """
        from anonshm import AnonymousMemory
        size = 2**31 + 8192
        with AnonymousMemory(size) as mem:
            data = b"\\1" * size
            print(mem.write(data))
            del data
            print(mem.read(4096, size - 4096) == b"\\1" * 4096)
            got = mem.read(size)
            print(len(got), got.count(1) == size)
    """
    assert run_child(code).stdout.split() == [str(2**31 + 8192), "True", str(2**31 + 8192), "True"]
