"""The command line: ``demo`` (both protocols, live), ``info`` (kernel features), ``ps``."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Final

from . import __version__
from ._backend import backend
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
        with mem.for_child() as (token, options):  # a duplicate for this child alone
            _say("parent", f"created {mem!r}, wrote {_QUESTION!r}, token {token!r}")
            argv = [sys.executable, "-m", "anonshm", "demo", "--child", "second", token]
            status = subprocess.run(argv, check=False, **options).returncode
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


def _probe_seals() -> tuple[bool, bool]:
    """Whether new memory is sealed against resizing, and can be frozen."""
    with AnonymousMemory(1, name="anonshm-info") as mem:
        sealed = mem.fixed_size
        try:
            mem.freeze()
        except Exception:  # reported, not raised: this is a probe
            return sealed, False
        return sealed, mem.frozen


def _noexec() -> str:
    if sys.platform != "linux" or backend.FEATURES.name != "linux":
        return "not a memfd"
    from . import _linux  # noqa: PLC0415 - the Linux backend's own flag

    return "yes" if _linux.memfd_flags() & _linux.MFD_NOEXEC_SEAL else "no (Linux < 6.3)"


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError as exc:
        return f"unavailable ({exc.strerror})"


def _ps_main(args: argparse.Namespace) -> int:
    if sys.platform != "linux":
        print(f"anonshm ps reads Linux's /proc, which {sys.platform} has not", file=sys.stderr)
        return 2
    from . import _ps  # noqa: PLC0415 - Linux only

    return _ps.main(args)


def _probe_tmpfile(directory: str) -> str:
    if sys.platform == "linux":
        from ._unix import TMPFILE_FLAGS  # noqa: PLC0415 - POSIX only

        try:
            fd = os.open(directory, TMPFILE_FLAGS, 0o600)
        except OSError as exc:
            return f"no ({exc.strerror}): a random name, unlinked at once"
        os.close(fd)
        return "yes: the backing file never has a name"
    return "no (Linux only): a random name, unlinked at once"


def _hugetlb() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("HugePages_Total:"):
            total = int(line.split()[1])
            return f"{total} pages reserved" if total else "no pages reserved (vm.nr_hugepages=0)"
    return "not in this kernel"


_THP: Final = "/sys/kernel/mm/transparent_hugepage"
# What each shmem_enabled setting does to memfd memory (the kernel's "shmem"), and so
# whether map(hugepages=True), which only advises (MADV_HUGEPAGE), gets huge pages.
_SHMEM_HUGEPAGES: Final = {
    "advise": "only map(hugepages=True) gets huge pages",
    "always": "every map gets huge pages, map(hugepages=True) or not",
    "within_size": "huge pages where whole ones fit in the memory; map(hugepages=True): all of it",
    "never": "no huge pages: map(hugepages=True) is ignored (advise would honour it)",
    "deny": "no huge pages for any shmem, map(hugepages=True) or not (an emergency switch)",
    "force": "huge pages for all shmem, map(hugepages=True) or not (a testing switch)",
}


def _bracketed(text: str) -> str | None:
    """The chosen word of a sysfs setting ("always [advise] never" -> "advise")."""
    return next((word[1:-1] for word in text.split() if word.startswith("[")), None)


def _shmem_hugepages(
    shmem_enabled: str | None, pmd_enabled: str | None, pmd_size: str = "hugepages-2048kB"
) -> tuple[str, str]:
    """``(setting, what it means for map(hugepages=True))``, from the sysfs texts.

    Args:
        shmem_enabled: the text of ``shmem_enabled`` (None: the kernel has none).
        pmd_enabled: the text of ``<pmd_size>/shmem_enabled``, the huge page size's own
            setting (Linux >= 6.11 has one per size; ``inherit`` follows the global
            one), or None.
        pmd_size: the directory of the size that ``MADV_HUGEPAGE`` asks for.
    """
    setting = None if shmem_enabled is None else _bracketed(shmem_enabled)
    if setting is None:
        return (
            "unavailable",
            "map(hugepages=True) gets no huge pages: this kernel has none for shmem",
        )
    label = setting
    own = None if pmd_enabled is None else _bracketed(pmd_enabled)
    # deny and force overrule every size's own setting; otherwise the size's own wins.
    if setting not in ("deny", "force") and own not in (None, "inherit"):
        label = f"{own} (from {pmd_size}; the global shmem_enabled says {setting})"
        setting = own
    meaning = _SHMEM_HUGEPAGES.get(setting, "a setting anonshm does not know")
    return label, meaning


def _read_or_none(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def _thp_shmem() -> tuple[str, str]:
    size = (_read_or_none(f"{_THP}/hpage_pmd_size") or "").strip()
    pmd_size = f"hugepages-{int(size) // 1024}kB" if size.isdigit() else "hugepages-2048kB"
    pmd_enabled = _read_or_none(f"{_THP}/{pmd_size}/shmem_enabled")
    return _shmem_hugepages(_read_or_none(f"{_THP}/shmem_enabled"), pmd_enabled, pmd_size)


def _info(_: argparse.Namespace) -> int:
    sealed, frozen = _probe_seals()
    features = backend.FEATURES
    print("anonshm", __version__)
    _feature("python", platform.python_version())
    _feature("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})")
    _feature("backend", f"{features.name}: {features.creation}")
    _feature("read-only descriptors", features.read_only)
    _feature("fixed size (kernel-enforced)", "yes" if sealed else "no")
    _feature("no-exec seal (MFD_NOEXEC_SEAL)", _noexec())
    _feature("freeze (kernel-enforced)", "yes" if frozen else "no")
    _feature("hugetlb", _hugetlb())
    setting, meaning = _thp_shmem()
    _feature("transparent hugepages for shmem", setting)
    _feature("", meaning)
    tmp = tempfile.gettempdir()
    _feature(f"O_TMPFILE in {tmp}", _probe_tmpfile(tmp))
    return 0


_DESCRIPTION: Final = (
    "Anonymous shared memory, handed from a parent to the processes it chooses. "
    "demo hands memory to a child both ways (inherited, and by token) and shows it "
    "live; info reports the backend and what this kernel offers; ps lists the "
    "anonymous memories that processes hold."
)


def main(argv: Sequence[str] | None = None, *, prog: str = "anonshm") -> int:
    """Run the command line; return the exit status.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
        prog: the name usage and errors show: ``anonshm`` for the console script,
            ``python -m anonshm`` when run as a module.
    """
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"anonshm {__version__}")
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
    ps.set_defaults(run=_ps_main)
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
