"""The public API on Windows (tested under Wine): memories, maps, both protocols.

What a child may do is judged by raw Win32 calls in that child (``_win32``), not by
anonshm: a child not handed a memory cannot use its handle's value, and a read-only
handle cannot be mapped for writing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

assert sys.platform == "win32" or not TYPE_CHECKING  # for type checkers: Windows only

import concurrent.futures  # noqa: E402
import multiprocessing  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

from anonshm import AnonShmError, AnonymousMemory, Protection, TokenError, spawn  # noqa: E402
from anonshm import _win32 as win32  # noqa: E402
from tests.windows import _workers  # noqa: E402
from tests.windows._helpers import child, run  # noqa: E402

ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6

# In a child: can this handle value be mapped (for reading; for writing)?  Raw calls.
RAW_PROBE = """
    import sys
    from anonshm import _win32 as win32
    handle = int(sys.argv[1])
    for access in (win32.FILE_MAP_READ, win32.FILE_MAP_WRITE):
        try:
            address = win32.map_view(handle, access, 0, 4)
        except OSError as exc:
            print("refused", exc.winerror)
        else:
            win32.unmap_view(address)
            print("mapped")
"""

# In a child: import what the parent passed, by both protocols, and answer in it.
ANSWER = """
    import sys
    from anonshm import AnonymousMemory
    how, what = sys.argv[1], sys.argv[2]
    mem = AnonymousMemory.inherited(what) if how == "inherit" else AnonymousMemory.from_token(what)
    with mem, mem.map() as view:
        print(mem.name, mem.size, mem.protection.name, bytes(view[:5]).decode())
        if mem.protection.name == "READ_WRITE":
            view[5:11] = b" world"
"""


def test_a_memory_maps_writes_and_reads_back() -> None:
    with AnonymousMemory(10, name="frame") as mem, mem.map(2, 5) as view:
        view[:5] = b"hello"
        assert bytes(view.buf) == b"hello"
        assert (mem.size, mem.name, mem.fixed_size, mem.frozen) == (10, "frame", True, False)
        assert win32.handle_flags(mem.fileno()) & win32.HANDLE_FLAG_INHERIT == 0


def test_a_view_made_from_a_map_outlives_the_memory() -> None:
    mem = AnonymousMemory(4096)
    view = mem.map()
    view[:4] = b"kept"
    kept = view.buf[:4]  # an export: the pages must stay mapped under it
    mem.close()
    assert view.closed
    assert bytes(kept) == b"kept"
    kept.release()


def test_export_is_nspr_s_windows_token_and_round_trips() -> None:
    with AnonymousMemory(64) as mem:
        assert mem.export() == f"1:{mem.fileno()}:2"
        with AnonymousMemory.from_token(f"1:{mem.fileno()}:2") as again:
            assert again.protection is Protection.READ_WRITE
        with AnonymousMemory.from_token(f"0:{mem.fileno()}:4") as reader:
            assert reader.protection is Protection.READ_ONLY
            assert win32.granted_access(reader.fileno()) & win32.FILE_MAP_WRITE == 0
        with mem.duplicate(protection=Protection.READ_ONLY) as ro:
            assert ro.export() == f"0:{ro.fileno()}:4"
            with pytest.raises(TokenError, match="read-only"):
                AnonymousMemory.from_token(f"1:{ro.fileno()}:2")
        for bad in (f"{mem.fileno()}:1", f"1:{mem.fileno()}:4", "1:0:2", f"1:{mem.fileno() + 1}:2"):
            with pytest.raises(TokenError):
                AnonymousMemory.from_token(bad)


def test_a_token_of_a_closed_handle_is_refused() -> None:
    mem = AnonymousMemory(16)
    token = mem.export()
    mem.close()
    with pytest.raises(TokenError, match="not open"):
        AnonymousMemory.from_token(token)


def test_spawn_hands_the_memory_to_that_child_alone() -> None:
    with AnonymousMemory(4096, name="greeting") as mem:
        with mem.map() as view:
            view[:5] = b"hello"
        with spawn(
            child(ANSWER, "inherit", "greeting"), inherit=[mem], stdout=subprocess.PIPE
        ) as kid:
            out, _ = kid.communicate(timeout=120)
            (value,) = kid.inherited.values()
        assert kid.returncode == 0
        assert out.decode().split() == ["greeting", "4096", "READ_WRITE", "hello"]
        with mem.map(length=11) as view:
            assert bytes(view.buf) == b"hello world"
        # A child started meanwhile by other means cannot use that value at all.
        assert run(child(RAW_PROBE, str(value))).split() == [
            "refused",
            str(ERROR_INVALID_HANDLE),
            "refused",
            str(ERROR_INVALID_HANDLE),
        ]


def test_a_read_only_memory_cannot_be_mapped_for_writing_by_its_child() -> None:
    with (
        AnonymousMemory(4096, name="ro") as mem,
        mem.duplicate(protection=Protection.READ_ONLY) as ro,
    ):
        code = RAW_PROBE.replace(
            "int(sys.argv[1])", "int(os.environ['NSPR_INHERIT_FDS'].split(':')[2], 16)"
        )
        code = code.replace("import sys", "import os, sys")
        with spawn(child(code), inherit=[ro], stdout=subprocess.PIPE) as kid:
            out, _ = kid.communicate(timeout=120)
        assert out.decode().split() == ["mapped", "refused", str(ERROR_ACCESS_DENIED)]


def test_the_token_protocol_by_the_application_s_own_means() -> None:
    # for_child(): a duplicate for this child alone, inheritable while it starts, in
    # its handle list; the child imports it by token.
    with AnonymousMemory(4096, name="mine") as mem:
        with mem.map() as view:
            view[:5] = b"hello"
        with mem.for_child() as (token, options):
            (passed,) = options["startupinfo"].lpAttributeList["handle_list"]
            assert token == f"1:{passed}:2"
            assert win32.handle_flags(passed) & win32.HANDLE_FLAG_INHERIT
            out = subprocess.run(
                child(ANSWER, "token", token),
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
                **options,
            ).stdout
        assert out.split() == ["anonshm", "4096", "READ_WRITE", "hello"]
        with mem.map(length=11) as view:
            assert bytes(view.buf) == b"hello world"
        assert run(child(RAW_PROBE, str(passed))).split()[:1] == ["refused"]


def test_freeze_makes_this_handle_and_later_ones_read_only() -> None:
    with AnonymousMemory(4096) as mem, mem.map() as producer:
        producer[:4] = b"done"
        before = mem.duplicate()  # handed out before: keeps write access (documented)
        mem.freeze()
        mem.freeze()  # again: nothing more to do
        assert mem.protection is Protection.READ_ONLY
        assert win32.granted_access(mem.fileno()) & win32.FILE_MAP_WRITE == 0
        with pytest.raises(PermissionError):
            mem.map(protection=Protection.READ_WRITE)
        with mem.duplicate() as after:
            assert after.protection is Protection.READ_ONLY
        with before, before.map() as late:
            late[:1] = b"D"
        assert producer[:4] == b"Done"


def test_what_windows_cannot_do_is_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(AnonShmError, match="directory= has no meaning on Windows"):
        AnonymousMemory(16, directory=str(tmp_path))
    import socket

    left, right = socket.socketpair()
    with left, right, AnonymousMemory(16) as mem:
        with pytest.raises(AnonShmError, match="cannot send memory over a socket"):
            mem.send(left)
        with pytest.raises(AnonShmError, match="cannot send memory over a socket"):
            AnonymousMemory.receive(right)


@pytest.mark.parametrize("how", ["process", "pool", "executor"])
def test_multiprocessing_spawn_delivers_the_same_memory(how: str) -> None:
    context = multiprocessing.get_context("spawn")
    with AnonymousMemory(4096, name=f"mp-{how}") as mem:
        with mem.map() as view:
            view[:6] = b"parent"
        if how == "process":
            process = context.Process(target=_workers.touch, args=(mem, b"child!"))
            process.start()
            process.join(120)
            assert process.exitcode == 0
        elif how == "pool":
            with context.Pool(1) as pool:
                seen = pool.apply(_workers.touch, (mem, b"child!"))
                assert seen == (f"mp-{how}", 4096, "READ_WRITE", b"parent")
        else:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
                seen = executor.submit(_workers.touch, mem, b"child!").result(120)
                assert seen == (f"mp-{how}", 4096, "READ_WRITE", b"parent")
        with mem.map(length=6) as view:
            assert bytes(view.buf) == b"child!"


def test_channels_are_refused_clearly_on_windows() -> None:
    # A channel's reader gets its memory and pipe over a socket carrying handles,
    # which Windows sockets do not: every door to a channel says so.
    from anonshm import ChannelReader, ChannelWriter, channel

    with pytest.raises(AnonShmError, match="windows backend has no channels"):
        channel(4096)
    for kind in (ChannelReader, ChannelWriter):
        with pytest.raises(AnonShmError, match="has no channels"):
            kind.inherited("frames")
        with pytest.raises(AnonShmError, match="has no channels"):
            kind()
    with AnonymousMemory(8) as mem, pytest.raises(AnonShmError, match="sockets carry no handles"):
        mem.send(None)  # type: ignore[arg-type]
