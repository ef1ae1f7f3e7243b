"""The command line: ``demo`` (both protocols, live), ``info`` (kernel features), ``ps``."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from . import __version__, _linux, _memory, _ps
from ._memory import AnonymousMemory
from ._spawn import spawn

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

_QUESTION = b"ping from the parent"
_ANSWER = b"pong from the child"


def _say(role: str, text: str) -> None:
    print(f"  [{role} {os.getpid()}] {text}", flush=True)


def _answer(mem: AnonymousMemory, role: str) -> None:
    """The child's half of the demo: read the parent's message, write an answer after it."""
    with mem, mem.map() as view:
        size = view.buf.tobytes().index(0)
        _say(role, f"holds {mem!r}")
        _say(role, f"reads {view.buf[:size].tobytes()!r}")
        view[size + 1 : size + 1 + len(_ANSWER)] = _ANSWER
        _say(role, f"writes {_ANSWER!r}")


def _check(mem: AnonymousMemory, role: str) -> bool:
    start = len(_QUESTION) + 1
    with mem.map(start, len(_ANSWER)) as view:
        got = view.buf.tobytes()
    _say(role, f"reads back {got!r}")
    return got == _ANSWER


def _demo_first() -> bool:
    print("First protocol: the child inherits the memory (spawn + NSPR_INHERIT_FDS)")
    with AnonymousMemory(4096, name="demo-inherit") as mem:
        with mem.map() as view:
            view[: len(_QUESTION)] = _QUESTION
        _say("parent", f"created {mem!r}, wrote {_QUESTION!r}")
        argv = [sys.executable, "-m", "anonshm", "demo", "--child", "first"]
        with spawn(argv, inherit=[mem]) as child:
            _say("parent", f"spawned child {child.pid}, inherit={list(child.inherited)}")
        if child.returncode != 0:
            _say("parent", f"child failed with status {child.returncode}")
            return False
        return _check(mem, "parent")


def _demo_second() -> bool:
    print("Second protocol: the parent exports a token and starts the child itself")
    with AnonymousMemory(4096, name="demo-token") as mem:
        with mem.map() as view:
            view[: len(_QUESTION)] = _QUESTION
        token = mem.export()
        _say("parent", f"created {mem!r}, wrote {_QUESTION!r}, token {token!r}")
        argv = [sys.executable, "-m", "anonshm", "demo", "--child", "second", token]
        status = subprocess.run(argv, pass_fds=[mem.fileno()], check=False).returncode
        if status != 0:
            _say("parent", f"child failed with status {status}")
            return False
        return _check(mem, "parent")


def _demo(args: argparse.Namespace) -> int:
    if args.child == "first":
        _answer(AnonymousMemory.inherited("demo-inherit"), "child ")
        return 0
    if args.child == "second":
        _answer(AnonymousMemory.from_token(args.token), "child ")
        return 0
    results = [_demo_first(), _demo_second()]
    for ok, protocol in zip(results, ("first (inheritance)", "second (token)"), strict=True):
        print(f"{'ok  ' if ok else 'FAIL'} {protocol}: the parent read the child's answer")
    return 0 if all(results) else 1


def _feature(label: str, value: object) -> None:
    print(f"  {label:<34} {value}")


def _probe_seals() -> tuple[bool, bool, bool]:
    """Whether memfd memory is sealed, carries the no-exec seal, and can be frozen."""
    with AnonymousMemory(1, name="anonshm-info") as mem:
        seals = _linux.seals(mem.fileno())
        sealed = seals & _linux.FIXED_SIZE_SEALS == _linux.FIXED_SIZE_SEALS
        noexec = bool(_linux._memfd_flags & _linux.MFD_NOEXEC_SEAL)
        try:
            mem.freeze()
        except Exception:  # reported, not raised: this is a probe
            return sealed, noexec, False
        return sealed, noexec, mem.frozen


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError as exc:
        return f"unavailable ({exc.strerror})"


def _probe_tmpfile(directory: str) -> str:
    try:
        fd = os.open(directory, _linux.TMPFILE_FLAGS, 0o600)
    except OSError as exc:
        return f"no ({exc.strerror}): a random name, unlinked at once"
    os.close(fd)
    return "yes: the backing file never has a name"


def _hugetlb() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("HugePages_Total:"):
            total = int(line.split()[1])
            return f"{total} pages reserved" if total else "no pages reserved (vm.nr_hugepages=0)"
    return "not in this kernel"


def _info(_: argparse.Namespace) -> int:
    sealed, noexec, frozen = _probe_seals()
    thp = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
    print("anonshm", __version__)
    _feature("python", platform.python_version())
    _feature("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})")
    _feature("backend", f"{_memory._backend.NAME}: {_memory._backend.DEFAULT_STRATEGY} by default")
    _feature("memfd_create", "yes")
    _feature("fixed size (seals grow/shrink)", "yes" if sealed else "no")
    _feature("no-exec seal (MFD_NOEXEC_SEAL)", "yes" if noexec else "no (Linux < 6.3)")
    _feature("freeze (F_SEAL_FUTURE_WRITE)", "yes" if frozen else "no (Linux < 5.1)")
    _feature("hugetlb", _hugetlb())
    _feature("transparent hugepages for shmem", _read(thp))
    tmp = tempfile.gettempdir()
    _feature(f"O_TMPFILE in {tmp}", _probe_tmpfile(tmp))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m anonshm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="hand memory to a child by both protocols, live")
    demo.add_argument("--child", choices=["first", "second"], help=argparse.SUPPRESS)
    demo.add_argument("token", nargs="?", help=argparse.SUPPRESS)
    demo.set_defaults(run=_demo)
    info = commands.add_parser("info", help="the backend and the kernel features found")
    info.set_defaults(run=_info)
    ps = commands.add_parser("ps", help="anonymous memories held by this user's processes")
    ps.add_argument(
        "--all",
        action="store_true",
        help="other users' processes too (those this user may inspect: all of them for root)",
    )
    ps.set_defaults(run=_ps.main)
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`python -m anonshm ps | head`): stop quietly, as other
        # command-line tools do, and keep Python's exit-time flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    return status
