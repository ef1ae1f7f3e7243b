"""``run.py --profile``: where anonshm's time goes on its hot paths, per call.

Three views: the pieces of create, map, close, export/from_token and spawn timed one
by one beside the raw system calls they wrap; cProfile of a loop of lifecycles; and
``python -X importtime`` of ``import anonshm`` (what a fresh child pays before it can
read a single byte).  The pieces reach into anonshm's private modules on purpose; a
piece that no longer exists is reported as unavailable rather than failing the run.
"""

from __future__ import annotations

import cProfile
import fcntl
import gc
import io
import mmap
import os
import pstats
import statistics
import subprocess
import sys
import time
import weakref
from typing import TYPE_CHECKING, Final

from _harness import seconds

if TYPE_CHECKING:
    from collections.abc import Callable

    from anonshm import AnonymousMemory

NUMBER: Final = 2000
REPEAT: Final = 7
IMPORT_RUNS: Final = 7


def per_call(operation: Callable[[], object], number: int = NUMBER) -> float:
    """The median over REPEAT batches of the mean time per call, in seconds."""
    results = []
    for _ in range(REPEAT):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(number):
                operation()
            results.append((time.perf_counter() - start) / number)
        finally:
            gc.enable()
    return statistics.median(results)


def _row(label: str, operation: Callable[[], object], number: int = NUMBER) -> float:
    try:
        value = per_call(operation, number)
    except Exception as exc:  # a piece renamed by a later anonshm: say so, go on
        print(f"   {label:<58} unavailable ({type(exc).__name__}: {exc})")
        return float("nan")
    print(f"   {label:<58} {seconds(value):>10}")
    return value


def _overhead(label: str, mine: float, raw: float) -> None:
    print(f"   {'=> ' + label:<58} {seconds(mine - raw):>10}  ({mine / raw:.2f}x raw)")


def pieces() -> None:
    from anonshm import AnonymousMemory, Protection, _linux, _memory, _net, _spawn, _wire
    from anonshm._map import MemoryMap

    _backend = _linux

    print("\n== create + close (4 KiB): AnonymousMemory(4096).close() ==")

    def raw_create() -> None:
        fd = os.memfd_create("anonshm", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        os.close(fd)

    def raw_create_sealed() -> None:
        fd = os.memfd_create("anonshm", _linux.memfd_flags())
        os.ftruncate(fd, 4096)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _linux.FIXED_SIZE_SEALS)
        os.close(fd)

    raw = _row("raw memfd_create + ftruncate + close", raw_create)
    _row("raw, with anonshm's flags + F_ADD_SEALS (the backend's calls)", raw_create_sealed)

    def backend_create() -> None:
        pending: list[int] = []
        _backend.create(pending, "a", 4096, None, False)
        os.close(pending.pop())

    _row("_backend.create(...) + close", backend_create)
    mine = _row("AnonymousMemory(4096).close()", lambda: AnonymousMemory(4096).close())
    _overhead("anonshm over raw", mine, raw)
    _row("  _check_size(4096)", lambda: _memory._check_size(4096))
    _row("  check_name('anonshm')", lambda: _wire.check_name("anonshm"))
    _row(
        "  check_protection(READ_WRITE)",
        lambda: _wire.check_protection(Protection.READ_WRITE, "protection"),
    )
    with AnonymousMemory(4096) as held:
        fd = held.fileno()
        _row(
            "  fcntl(F_ADD_SEALS) alone",
            lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _linux.FIXED_SIZE_SEALS),
        )
        _row("  label f-string 'AnonymousMemory {name!r} fd={fd}'", lambda: f"A {'anonshm'!r} {fd}")

        def finalize() -> None:
            weakref.finalize(held, print, "label").detach()

        def watch() -> None:
            _net.forget(_net.watch(held, print, "label"))

        _row("  weakref.finalize(...) + detach() (the stdlib net)", finalize)
        _row("  _net.watch(...) + forget() (anonshm's net)", watch)

        print("\n== map + close (4 KiB): mem.map() then view.close() ==")

        def raw_map() -> None:
            mm = mmap.mmap(fd, 4096)
            buf = memoryview(mm)
            buf.release()
            mm.close()

        raw = _row("raw mmap.mmap + memoryview + release + close", raw_map)
        mine = _row("mem.map().close()", lambda: held.map().close())
        _overhead("anonshm over raw", mine, raw)
        rw = Protection.READ_WRITE
        inner = _row(
            "  MemoryMap(fd, 0, 4096, RW).close() (no checks, no registry)",
            lambda: MemoryMap(fd, 0, 4096, rw).close(),
        )
        view = held.map()
        _row("  repr(view) (built eagerly as the finalizer's label)", lambda: repr(view))
        _row("  Protection.READ_WRITE.name", lambda: rw.name)
        _row("  Protection.mmap_args", lambda: rw.mmap_args)
        maps: weakref.WeakSet[MemoryMap] = weakref.WeakSet()

        def weakset() -> None:
            maps.add(view)
            maps.discard(view)

        _row("  WeakSet.add + discard (a stdlib registry of maps)", weakset)
        _row("  [weakref.ref(view)] (a list registry of maps)", lambda: [weakref.ref(view)])
        print(
            f"   {'  => map() checks + registry (map().close() - MemoryMap())':<58} "
            f"{seconds(mine - inner):>10}"
        )
        view.close()

        print("\n== export + from_token (in this process: the child's import path) ==")
        token = held.export()
        _row("mem.export()", held.export)

        def raw_import() -> None:
            own = os.dup(fd)
            os.fstat(own)
            os.close(own)

        raw = _row("raw dup + fstat + close", raw_import)
        mine = _row(
            "AnonymousMemory.from_token(token).close()",
            lambda: AnonymousMemory.from_token(token).close(),
        )
        _overhead("anonshm over raw", mine, raw)
        _row("  parse_token(token)", lambda: _wire.parse_token(token))
        _row("  fcntl(F_GETFL)", lambda: fcntl.fcntl(fd, fcntl.F_GETFL))
        _row("  _backend.seals(fd) (F_GET_SEALS)", lambda: _backend.seals(fd))
        _row(
            "  _backend.kernel_name(fd) (readlink /proc/self/fd)", lambda: _backend.kernel_name(fd)
        )

        _handoff_pieces(held)

        print("\n== spawn: the Python work before fork/exec (the exec itself is ~0.6 ms) ==")
        _row("  _entries([mem])", lambda: _spawn._entries([held]))
        _row(f"  dict(os.environ) ({len(os.environ)} variables)", lambda: dict(os.environ))
        _row("  dict(os.environb) (bytes: no decode, no re-encode)", lambda: dict(os.environb))
        _row("  format_inherit_fds", lambda: _wire.format_inherit_fds([("anonshm", fd)]))


def _handoff_pieces(held: AnonymousMemory) -> None:
    """send + receive + map + close over a socket pair, in this process (the worker path)."""
    import socket

    from anonshm import AnonymousMemory, TokenError, _handoff

    print("\n== send + receive + map + close (4 KiB, a socket pair in this process) ==")
    left, right = socket.socketpair()
    fd = held.fileno()
    size_message = (4096).to_bytes(8, "little")
    with left, right:

        def raw() -> None:
            socket.send_fds(left, [size_message], [fd])
            _, fds, _, _ = socket.recv_fds(right, 8, 1)
            with mmap.mmap(fds[0], 4096):
                pass
            os.close(fds[0])

        def mine() -> None:
            held.send(left)
            with AnonymousMemory.receive(right) as got, got.map():
                pass

        def parse_only() -> None:
            held.send(left)
            fds: list[int] = []
            _handoff.receive_fd(right, fds)
            os.close(fds.pop())

        def adopt_only() -> None:
            got = AnonymousMemory._adopt([os.dup(fd)], 1, TokenError, "x", name="a", size=4096)
            got.close()

        base = _row("raw send_fds + recv_fds + mmap + close", raw)
        total = _row("mem.send + receive + map + close", mine)
        _overhead("anonshm over raw", total, base)
        _row("  send + receive_fd (the message, parsed; no checks)", parse_only)
        _row("  dup + _adopt + close (fstat, F_GETFL, seals, the handle)", adopt_only)
        _row("  fstat", lambda: os.fstat(fd))


def profile_lifecycle(count: int = 20000) -> None:
    from anonshm import AnonymousMemory

    print(f"\n== cProfile: {count} x (AnonymousMemory(4096), map(), touch, close) ==")

    def loop() -> None:
        for _ in range(count):
            with AnonymousMemory(4096) as mem, mem.map() as view:
                view.buf[0] = 1

    profiler = cProfile.Profile()
    profiler.runcall(loop)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    for line in lines[start:]:
        if line.strip():
            print("   " + line.strip()[:110])


def _import_times(statement: str) -> tuple[float, dict[str, int]]:
    """Best wall time of a fresh interpreter running ``statement``; per-module µs."""
    best = float("inf")
    modules: dict[str, int] = {}
    for _ in range(IMPORT_RUNS):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement],
            capture_output=True,
            text=True,
            check=True,
        )
        best = min(best, time.perf_counter() - start)
        for line in result.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit():
                micros = int(cumulative)
                key = name.rstrip()
                modules[key] = min(modules.get(key, micros), micros)
    return best, modules


def imports() -> None:
    print(f"\n== import cost (fresh interpreter, best of {IMPORT_RUNS}) ==")
    for statement in ("pass", "import mmap, zlib", "import anonshm"):
        wall, _ = _import_times(statement)
        print(f"   python -c {statement!r:<26} {seconds(wall):>10} wall")
    _, modules = _import_times("import anonshm")
    print("   heaviest imports under 'import anonshm' (cumulative µs, best run; nested shown):")
    ranked = sorted(modules.items(), key=lambda item: -item[1])
    for name, micros in ranked[:24]:
        print(f"   {micros:>8} µs  {name}")


def main() -> int:
    import anonshm

    print(f"anonshm from {anonshm.__file__}; Python {sys.version.split()[0]}")
    pieces()
    profile_lifecycle()
    import _profile_channel

    _profile_channel.main()
    imports()
    return 0
