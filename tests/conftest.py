"""Shared fixtures: counting this process's descriptors and mappings, running children,
and what the backend under test can do (``FEATURES``), for the tests that branch on it."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonShmError, AnonymousMemory, Protection
from anonshm._backend import backend

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Final

ROOT = Path(__file__).resolve().parent.parent

FEATURES: Final = backend.FEATURES
"""What the backend under test can do: ``ANONSHM_BACKEND`` chooses it (CI runs both
``linux`` and ``posix``).  A test of a feature the backend lacks asserts its refusal."""

ALLOW_RESIZABLE: Final = not FEATURES.fixed_size
"""``receive()``'s ``allow_resizable=`` in tests about something else: False (the default,
every check made) where the kernel fixes sizes; True where no memory has a fixed size."""

REOPENS_READ_ONLY: Final = not backend.TWIN
"""Whether any read-write descriptor can be made read-only (Linux reopens it through
/proc); else only the read-only twin of a memory made here is (the posix backend)."""

NAMED_FOR_A_MOMENT: Final = backend.TWIN
"""Whether a new memory has a name for two system calls: its read-only twin is opened
by that name before the unlink (NSPR's strategy).  SIGKILL between them leaves it."""

SHM_PREFIX: Final = "anonshm."
"""How the names the posix backend gives its shared memory objects begin (in /dev/shm)."""

IN_DEV_SHM: Final = FEATURES.name == "posix"
"""Whether the memories are objects in the tmpfs at /dev/shm, bound by its size (the
posix backend on Linux), rather than memfds, which no filesystem bounds."""

# How this backend's memories show in /proc/<pid>/fd and /proc/<pid>/maps.
MEMORY_LINK: Final = f"/dev/shm/{SHM_PREFIX}" if IN_DEV_SHM else "/memfd:"

PS_REFUSAL: Final = "ps lists memfd memories"
"""How ``ps`` must refuse under a backend whose kernel records no names: it cannot see
that backend's memories, so an empty table would mislead."""


def pending_fix(condition: bool, defect: str) -> pytest.MarkDecorator:
    """Mark a test that fails where ``condition`` holds until a fix outside tests/ lands.

    Strict: once the fix is in, the test passes, the mark fails it, and it is removed.
    Each such fix is described exactly in the posix-tests branch's report.
    """
    return pytest.mark.xfail(condition, reason=f"{defect} (fix pending, see report)", strict=True)


def open_fds() -> set[int]:
    """The descriptors open in this process right now."""
    fds = set()
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            os.fstat(fd)  # the listing's own directory descriptor is gone by now
        except OSError:
            continue
        fds.add(fd)
    return fds


def mapping_lines(needle: str = MEMORY_LINK) -> list[str]:
    """Lines of /proc/self/maps that mention ``needle`` (by default: any memory's)."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if needle in line]


def file_id(fd: int) -> tuple[int, int]:
    """``(st_dev, st_ino)``: what tells one memory from another, named or not."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def maps_of(identity: tuple[int, int]) -> list[str]:
    """Lines of /proc/self/maps that map the file ``identity`` (see :func:`file_id`)."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            # start-end perms offset major:minor inode [path]
            fields = line.split(maxsplit=5)
            major, minor = (int(number, 16) for number in fields[3].split(":"))
            if (os.makedev(major, minor), int(fields[4])) == identity:
                found.append(line)
    return found


def shm_names() -> set[str]:
    """The names in /dev/shm that the posix backend could have made (others use it too)."""
    return {entry for entry in os.listdir("/dev/shm") if entry.startswith(SHM_PREFIX)}


def leaked_shm_names(before: set[str]) -> set[str]:
    """Names new in /dev/shm since ``before`` that stay there (any process's).

    Another process using anonshm's posix backend meanwhile has a name there for two
    system calls: a name counts only if three listings in a row still show it.  Where
    the memories are known, :func:`shm_names_of` tells this process's names apart.
    """
    new = shm_names() - before
    for _ in range(2):
        new &= shm_names()
    return new


def shm_names_of(identities: set[tuple[int, int]]) -> set[str]:
    """The names in /dev/shm of the files ``identities`` (see :func:`file_id`)."""
    found = set()
    for name in shm_names():
        try:
            st = os.stat(f"/dev/shm/{name}")
        except FileNotFoundError:  # another process's, unlinked meanwhile
            continue
        if (st.st_dev, st.st_ino) in identities:
            found.add(name)
    return found


def open_files() -> set[tuple[int, int]]:
    """The files (see :func:`file_id`) this process has descriptors of right now."""
    files = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            files.add(file_id(int(entry)))
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return files


def assert_freeze_refused(mem: AnonymousMemory) -> None:
    """Where the backend cannot freeze: the clear refusal, and nothing changed."""
    assert not FEATURES.freeze
    fd, protection = mem.fileno(), mem.protection
    with pytest.raises(AnonShmError, match="cannot freeze"):
        mem.freeze()
    assert (mem.fileno(), mem.protection, mem.frozen) == (fd, protection, False)
    if protection is Protection.READ_WRITE:
        with mem.map(length=1) as view:
            view[0] = view[0]  # still writable


def is_closed(fd: int) -> bool:
    """Whether ``fd`` is closed in this process (EBADF)."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def python_child(code: str, *args: str) -> list[str]:
    """argv that runs ``code`` (dedented) in a fresh interpreter with the repo importable."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for children: this one, with the repository on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_child(
    code: str, *args: str, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child; fail the test with its stderr if it exits non-zero."""
    result = subprocess.run(
        python_child(code, *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env() if env is None else env,
        pass_fds=pass_fds,
        check=False,
    )
    assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stderr}"
    return result


def need_root_and_unshare() -> str:
    """The path of unshare; skip (fail on CI) when this machine cannot run the test."""
    unshare = shutil.which("unshare")
    reason = None
    if os.geteuid() != 0:
        reason = "needs root to mount in a private mount namespace"
    elif unshare is None:
        reason = "needs unshare (util-linux) for a private mount namespace"
    else:
        probe = subprocess.run(
            [unshare, "-m", "true"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode != 0:
            reason = f"unshare -m is not allowed here: {probe.stderr.strip()}"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root with util-linux installed, yet: {reason}")
        pytest.skip(reason)
    assert unshare is not None
    return unshare


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves descriptors or mappings of memories behind."""
    gc.collect()
    fds_before, maps_before = open_fds(), mapping_lines()
    yield
    gc.collect()
    assert open_fds() == fds_before, "descriptors leaked"
    assert mapping_lines() == maps_before, "mappings leaked"
