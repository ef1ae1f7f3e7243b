"""Scenarios 1, 3 and 4, all inside this process: lifecycle, spawn overhead, first touch."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import time
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Final

from _harness import PAGE, Sample, batch

from anonshm import AnonymousMemory, spawn

if TYPE_CHECKING:
    from _harness import Trial

_ONES: dict[int, bytes] = {}


def touch(buf: memoryview) -> None:
    """Write one byte in every page (one strided copy in C, the same for every contender)."""
    pages = -(-len(buf) // PAGE)
    ones = _ONES.get(pages)
    if ones is None:
        ones = _ONES[pages] = b"\1" * pages
    buf[::PAGE] = ones


# --- 1. lifecycle: create, map, touch every page, close ---------------------------------


def lifecycle_anonshm(size: int) -> None:
    with AnonymousMemory(size) as mem, mem.map() as view:
        touch(view.buf)


def lifecycle_raw(size: int) -> None:
    fd = os.memfd_create("raw", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mm, memoryview(mm) as buf:
            touch(buf)
    finally:
        os.close(fd)


def lifecycle_shm(size: int) -> None:
    shm = shared_memory.SharedMemory(create=True, size=size)
    try:
        assert shm.buf is not None
        touch(shm.buf)
    finally:
        shm.close()
        shm.unlink()


def lifecycle_trials(size: int, count: int) -> list[tuple[str, Trial]]:
    def one(run: object) -> Trial:
        assert callable(run)
        return batch(lambda: run(size), count)

    return [
        ("anonshm", one(lifecycle_anonshm)),
        ("raw memfd+mmap", one(lifecycle_raw)),
        ("SharedMemory", one(lifecycle_shm)),
    ]


# --- 3. spawn overhead --------------------------------------------------------------------

TRUE: Final = "/bin/true"


def spawn_trials(mem: AnonymousMemory, count: int) -> list[tuple[str, Trial]]:
    """The same trivial child, started with the same descriptor and the same environment."""
    argv = [TRUE]

    def anonshm_spawn() -> None:
        spawn(argv, inherit=[mem]).wait()

    def popen_env() -> None:
        # What spawn() must do by hand: pass the fd and tell the child where it is.
        fd = mem.fileno()
        env = {**os.environ, "NSPR_INHERIT_FDS": f"{mem.name}:1:0x{fd:x}"}
        subprocess.Popen(argv, pass_fds=[fd], env=env).wait()

    def popen_plain() -> None:
        subprocess.Popen(argv, pass_fds=[mem.fileno()]).wait()

    return [
        ("anonshm spawn(inherit)", batch(anonshm_spawn, count)),
        ("Popen(pass_fds, env=)", batch(popen_env, count)),
        ("Popen(pass_fds)", batch(popen_plain, count)),
    ]


# --- 4. first touch ---------------------------------------------------------------------


def _first_touch(size: int, *, populate: bool, reserve: bool, hugepages: bool) -> Sample:
    start = time.perf_counter()
    with (
        AnonymousMemory(size, reserve=reserve) as mem,
        mem.map(populate=populate, hugepages=hugepages) as view,
    ):
        ready = time.perf_counter()
        touch(view.buf)
        done = time.perf_counter()
    return {"time": done - start, "setup": ready - start, "touch": done - ready}


def _first_touch_raw(size: int) -> Sample:
    start = time.perf_counter()
    fd = os.memfd_create("raw", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mm, memoryview(mm) as buf:
            ready = time.perf_counter()
            touch(buf)
            done = time.perf_counter()
    finally:
        os.close(fd)
    return {"time": done - start, "setup": ready - start, "touch": done - ready}


def first_touch_trials(size: int) -> list[tuple[str, Trial]]:
    def variant(populate: bool = False, reserve: bool = False, hugepages: bool = False) -> Trial:
        return lambda: _first_touch(size, populate=populate, reserve=reserve, hugepages=hugepages)

    return [
        ("map() lazy, then touch", variant()),
        ("map(populate=True)", variant(populate=True)),
        ("AnonymousMemory(reserve=True)", variant(reserve=True)),
        ("map(hugepages=True)", variant(hugepages=True)),
        ("raw memfd lazy (reference)", lambda: _first_touch_raw(size)),
    ]


def hugepage_probe(size: int) -> dict[str, object]:
    """Whether map(hugepages=True) really advises MADV_HUGEPAGE, and what the kernel did.

    Reads this process's /proc/self/smaps entry for the map: ``hg`` in VmFlags is the
    advice; ``FilePmdMapped``/``ShmemPmdMapped`` count bytes mapped by huge pages.
    """
    with AnonymousMemory(size) as mem, mem.map(hugepages=True) as view:
        touch(view.buf)
        anchor = ctypes.c_char.from_buffer(view.buf)
        address = ctypes.addressof(anchor)
        del anchor  # releases the buffer export before the map closes
        entry = _smaps_entry(address)
    flags = entry.get("VmFlags", "").split()
    return {
        "advised": "hg" in flags,
        "huge_bytes": sum(
            int(entry.get(key, "0 kB").split()[0]) * 1024
            for key in ("FilePmdMapped", "ShmemPmdMapped", "AnonHugePages")
        ),
    }


def _smaps_entry(address: int) -> dict[str, str]:
    entry: dict[str, str] = {}
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                if inside:
                    break
                inside = low <= address < high
            elif inside:
                key, _, value = line.partition(":")
                entry[key] = value.strip()
    return entry
