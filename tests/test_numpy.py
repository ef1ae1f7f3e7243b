"""numpy arrays over anonymous memory: zero-copy, shared with children, safe lifetimes."""

from __future__ import annotations

import gc
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, Protection, spawn
from tests.conftest import child_env, file_id, maps_of, python_child, run_child

if TYPE_CHECKING:
    import numpy as np
else:
    np = pytest.importorskip("numpy")

needs_buffer_protocol = pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="Python classes are buffers only from 3.12 on (PEP 688, __buffer__); "
    "on 3.11 use np.frombuffer(view.buf)",
)


def _unique(label: str) -> str:
    return f"np-{label}-{uuid.uuid4().hex[:12]}"


def test_frombuffer_is_zero_copy_across_maps_and_a_child() -> None:
    count = 100
    with AnonymousMemory(count * 8, name=_unique("zero-copy")) as mem:
        with mem.map() as writer, mem.map() as reader:
            written = np.frombuffer(writer.buf, dtype=np.float64)
            read = np.ndarray((10, 10), dtype=np.float64, buffer=reader.buf)
            assert not written.flags.owndata
            assert written.flags.writeable
            written[:] = np.arange(count) * 0.5
            assert read[3, 4] == 17.0
            assert np.array_equal(read.ravel(), written)

            code = """
                import struct
                from anonshm import AnonymousMemory
                with AnonymousMemory.inherited("numbers") as mem, mem.map() as view:
                    print(struct.unpack_from("=d", view.buf, 8 * 99)[0])
                    struct.pack_into("=d", view.buf, 0, -42.25)
            """
            with spawn(
                python_child(code),
                inherit={"numbers": mem},
                env=child_env(),
                stdout=subprocess.PIPE,
            ) as child:
                out, _ = child.communicate(timeout=60)
            assert child.returncode == 0
            assert out is not None
            assert float(out) == 49.5
            assert written[0] == read[0, 0] == -42.25
            del written, read


def test_read_only_map_gives_a_read_only_array() -> None:
    with AnonymousMemory(64) as mem, mem.map(protection=Protection.READ_ONLY) as view:
        array = np.frombuffer(view.buf, dtype=np.uint8)
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
        del array


def test_unaligned_window_gives_an_array_of_exactly_the_window() -> None:
    with AnonymousMemory(10_000) as mem:
        with mem.map() as whole:
            np.frombuffer(whole.buf, dtype=np.uint8)[:] = np.arange(10_000) % 251
        with mem.map(4099, 1000) as window:
            array = np.frombuffer(window.buf, dtype=np.uint8)
            assert array.shape == (1000,)
            assert np.array_equal(array, (np.arange(4099, 5099) % 251).astype(np.uint8))
            del array


def test_arrays_outlive_the_with_block_and_unmap_with_the_last(no_leaks: None) -> None:
    name = _unique("outlive")
    with AnonymousMemory(3 * 4096 + 5, name=name) as mem, mem.map(offset=5) as view:
        identity = file_id(mem.fileno())
        whole = np.frombuffer(view.buf, dtype=np.uint8)
        part = whole[100:200]
        whole[:] = 7
    assert mem.closed
    assert view.closed
    assert len(maps_of(identity)) == 1
    part[0] = 9
    assert whole[100] == 9
    assert int(whole.sum()) == 7 * (3 * 4096) + 2
    del whole
    gc.collect()
    assert len(maps_of(identity)) == 1
    assert part[0] == 9
    del part
    gc.collect()
    assert maps_of(identity) == []


@needs_buffer_protocol
def test_the_map_itself_is_a_buffer_for_numpy(no_leaks: None) -> None:
    name = _unique("buffer")
    with AnonymousMemory(64, name=name) as mem, mem.map() as view:
        identity = file_id(mem.fileno())
        # numpy's stubs take any Buffer only when mypy checks for Python >= 3.12.
        direct = np.frombuffer(view, dtype=np.uint32)  # type: ignore[call-overload,unused-ignore]
        direct[:] = np.arange(16)
        assert int.from_bytes(view.buf[4:8], sys.byteorder) == 1
        with memoryview(view) as raw:  # type: ignore[arg-type,unused-ignore]
            assert raw.nbytes == 64
    assert len(maps_of(identity)) == 1
    assert int(direct[15]) == 15
    del direct
    gc.collect()
    assert maps_of(identity) == []


@needs_buffer_protocol
def test_a_read_only_map_itself_gives_a_read_only_array() -> None:
    with AnonymousMemory(64) as mem, mem.map(protection=Protection.READ_ONLY) as view:
        array = np.frombuffer(view, dtype=np.uint8)  # type: ignore[call-overload,unused-ignore]
        assert not array.flags.writeable
        del array


def test_anonshm_imports_and_works_without_numpy() -> None:
    code = """
        import sys
        sys.modules["numpy"] = None  # any import of numpy now fails
        from anonshm import AnonymousMemory
        with AnonymousMemory(8) as mem, mem.map() as view:
            view[:2] = b"ok"
            print(bytes(view.buf[:2]).decode())
    """
    assert run_child(code).stdout == "ok\n"
