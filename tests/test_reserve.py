"""reserve=True: a full filesystem or memory limit is an OSError at creation.

Never a SIGBUS later, and never the OOM killer.  The real demonstrations need root:

- a small filesystem: in a private mount namespace (``unshare -m``), a child mounts a
  1 MiB tmpfs and tries to put 2 MiB of memory there.  Without ``reserve`` the creation
  succeeds (the file is sparse) and the writer dies of SIGBUS when the pages run out;
  with it, creation fails with ENOSPC and leaves nothing.
- a memory limit: a child joins a memory cgroup (v1 or v2) made for the test and asks
  for more than its limit.  Without the check of the limits, ``posix_fallocate`` fills
  the cgroup and the OOM killer ends the child (SIGKILL), which the test sees; with it,
  creation fails with ENOMEM naming the limit's file.  The cgroup also bounds what a
  regression can take from the machine: the child asking for 1 PiB runs in one.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from anonshm import AnonymousMemory
from tests.conftest import IN_DEV_SHM, child_env, need_root_and_unshare

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MIB = 1024 * 1024

# Runs as root inside `unshare -m`: the mount is private to this process and its
# children and disappears with them.  Reports what happened as one JSON line.
IN_NAMESPACE = """
    import errno, json, os, subprocess, sys
    from anonshm import AnonymousMemory

    MIB = 1024 * 1024
    mount = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "anonshm-test", mount], check=True)

    def fds():
        return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))

    def free():
        st = os.statvfs(mount)
        return st.f_bfree * st.f_frsize

    report = {"capacity": os.statvfs(mount).f_blocks * os.statvfs(mount).f_frsize}
    empty = free()
    before = fds()
    try:
        AnonymousMemory(2 * MIB, directory=mount, reserve=True).close()
    except OSError as exc:
        report["reserve"] = errno.errorcode.get(exc.errno, str(exc.errno))
        report["reserve_filename"] = exc.filename
        report["reserve_message"] = exc.strerror
    else:
        report["reserve"] = "created"
    report["fds_unchanged"] = fds() == before
    report["left_in_directory"] = os.listdir(mount)
    report["space_back"] = free() == empty

    # Half the filesystem, reserved: every page is taken at creation and given back at close.
    with AnonymousMemory(MIB // 2, directory=mount, reserve=True) as mem:
        report["reserved_taken"] = empty - free()
    report["reserved_returned"] = free() == empty

    # The same 2 MiB without reserve: created fine, then the writer runs out of pages.
    writer = (
        "import sys\\n"
        "from anonshm import AnonymousMemory\\n"
        "with AnonymousMemory(2 * 1024 * 1024, directory=sys.argv[1]) as mem, mem.map() as view:\\n"
        "    print('created', flush=True)\\n"
        "    for page in range(0, len(view), 4096):\\n"
        "        view[page] = 1\\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", writer, mount], capture_output=True, text=True, timeout=60
    )
    report["lazy_stdout"] = done.stdout
    report["lazy_returncode"] = done.returncode
    report["space_back_after_sigbus"] = free() == empty
    print(json.dumps(report))
"""


@pytest.mark.root
def test_reserve_on_a_full_filesystem_fails_at_creation_instead_of_sigbus(
    tmp_path: Path,
) -> None:
    unshare = need_root_and_unshare()
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        [
            unshare,
            "-m",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            textwrap.dedent(IN_NAMESPACE),
            str(mount),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["capacity"] == MIB
    assert report["reserve"] == errno.errorcode[errno.ENOSPC]
    # Refused by the check before posix_fallocate, which names the directory and sizes.
    assert report["reserve_filename"] == str(mount)
    assert "asked for 2 MiB (2097152 bytes)" in report["reserve_message"]
    assert "leaves 1 MiB (1048576 bytes)" in report["reserve_message"]
    assert report["fds_unchanged"]
    assert report["left_in_directory"] == []
    assert report["space_back"]
    assert report["reserved_taken"] >= MIB // 2
    assert report["reserved_returned"]
    # Why reserve matters: unreserved, the same memory is created and then kills its writer.
    assert report["lazy_stdout"] == "created\n"
    assert report["lazy_returncode"] == -signal.SIGBUS
    assert report["space_back_after_sigbus"]
    # The mount lived only in the namespace: here the directory is still empty and ours.
    assert list(mount.iterdir()) == []
    assert os.stat(mount).st_dev == os.stat(tmp_path).st_dev


def test_a_reserved_memfd_has_every_page_allocated() -> None:
    size = 4 * MIB + 1
    with AnonymousMemory(size, reserve=True) as mem:
        assert os.fstat(mem.fileno()).st_blocks * 512 >= size
    with AnonymousMemory(size) as lazy:
        assert os.fstat(lazy.fileno()).st_blocks == 0


def test_reserve_on_a_directory_allocates_and_a_failure_leaves_nothing(
    tmp_path: Path, no_leaks: None
) -> None:
    with AnonymousMemory(MIB, directory=tmp_path, reserve=True) as mem:
        assert os.fstat(mem.fileno()).st_blocks * 512 >= MIB
    # More than any disk holds: refused after the file was made (by ftruncate: EFBIG on
    # ext4; by the check of the free space: ENOSPC on a tmpfs /tmp).
    with pytest.raises(OSError) as caught:
        AnonymousMemory(2**60, directory=tmp_path, reserve=True)
    assert caught.value.errno in (errno.ENOSPC, errno.EFBIG)
    assert list(tmp_path.iterdir()) == []


def _skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI runs as root with a memory cgroup to make, yet: {reason}")
    pytest.skip(reason)


def _own_memory_cgroup() -> tuple[int, Path] | str:
    """(cgroup version, this process's memory cgroup), or why none can hold a child."""
    if os.geteuid() != 0:
        return "needs root to make a memory cgroup"
    own = {}  # "1": the v1 memory hierarchy's path, "2": the v2 path
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0" and not controllers:
            own["2"] = path
        elif "memory" in controllers.split(","):
            own["1"] = path
    found = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        dash = fields.index("-", 6)
        root, point, fstype, options = fields[3], fields[4], fields[dash + 1], fields[dash + 3]
        version = {"cgroup": "1", "cgroup2": "2"}.get(fstype)
        if version is None or version not in own or version in found:
            continue
        if version == "1" and "memory" not in options.split(","):
            continue
        path = own[version]
        if root != "/":
            if path != root and not path.startswith(root + "/"):
                continue
            path = path[len(root) :]
        found[version] = Path(point + path.rstrip("/"))
    if "1" in found:  # a v1 memory hierarchy holds the controller even beside a v2 mount
        return 1, found["1"]
    if "2" not in found:
        return "no cgroup filesystem with the memory controller is mounted"
    base = found["2"]
    if "memory" not in (base / "cgroup.controllers").read_text().split():
        return f"the memory controller is not available in {base}"
    if "memory" not in (base / "cgroup.subtree_control").read_text().split():
        try:
            (base / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:  # EBUSY: this cgroup holds processes and is not the root
            return f"cannot give the children of {base} the memory controller: {exc}"
    return 2, base


@dataclass(frozen=True)
class MemoryCgroup:
    """A memory cgroup made for one test: the child joins ``leaf``; ``limited`` has the limit."""

    version: int
    leaf: Path
    limited: Path

    @property
    def limit_file(self) -> str:
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        return str(self.limited / name)

    def oom_kills(self) -> int:
        """How many of the leaf's processes the OOM killer has ended."""
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.leaf / events).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill count in {self.leaf / events}")


def _write_limit(cgroup: MemoryCgroup, limit: int) -> None:
    # No swap either: the limit is all the test's memory can have, on any machine.
    if cgroup.version == 2:
        (cgroup.limited / "memory.max").write_text(str(limit))
        swap = cgroup.limited / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")
    else:
        (cgroup.limited / "memory.limit_in_bytes").write_text(str(limit))
        memsw = cgroup.limited / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # memory and swap together; at least the memory limit
            memsw.write_text(str(limit))


@pytest.fixture
def memory_cgroup() -> Iterator[Callable[..., MemoryCgroup]]:
    """Make memory cgroups under this process's own; remove them after the test."""
    made: list[Path] = []

    def make(limit: int, *, on_parent: bool = False) -> MemoryCgroup:
        found = _own_memory_cgroup()
        if isinstance(found, str):
            _skip_or_fail(found)
        version, base = found
        top = base / f"anonshm-test-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            top.mkdir()
        except OSError as exc:  # a read-only cgroup filesystem, a container's rules
            _skip_or_fail(f"cannot make a cgroup in {base}: {exc}")
        made.append(top)
        leaf = top
        if on_parent:
            if version == 2:
                (top / "cgroup.subtree_control").write_text("+memory")
            leaf = top / "child"
            leaf.mkdir()
            made.append(leaf)
        cgroup = MemoryCgroup(version, leaf, top)
        _write_limit(cgroup, limit)
        return cgroup

    yield make
    for path in reversed(made):
        path.rmdir()  # the child has exited: the cgroup is empty


# Joins the cgroup whose cgroup.procs is argv[1] before allocating anything large (what
# the interpreter allocated before stays charged outside it), then reserves argv[2]
# bytes in directory argv[3] (a memfd if empty), then 16 MiB.  One JSON line.
IN_CGROUP = """
    import errno, json, os, sys

    with open(sys.argv[1], "w") as procs:
        procs.write(str(os.getpid()))
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")  # should a limit fail to hold, the OOM killer takes this child

    from anonshm import AnonymousMemory

    size, directory = int(sys.argv[2]), sys.argv[3] or None
    report = {}
    before = sorted(os.listdir("/proc/self/fd"))
    try:
        AnonymousMemory(size, directory=directory, reserve=True).close()
    except OSError as exc:
        report["error"] = [errno.errorcode.get(exc.errno), exc.filename, exc.strerror]
    else:
        report["error"] = ["created", None, None]
    report["fds_unchanged"] = sorted(os.listdir("/proc/self/fd")) == before
    with AnonymousMemory(16 * 1024 * 1024, directory=directory, reserve=True) as mem:
        report["small_reserved"] = os.fstat(mem.fileno()).st_blocks * 512
    print(json.dumps(report))
"""

# As IN_CGROUP, inside `unshare -m`: first mounts a 1 GiB tmpfs at argv[3], private to
# the namespace: much more room than the cgroup's memory.
IN_CGROUP_ON_TMPFS = (
    """
    import subprocess, sys

    mount = ["mount", "-t", "tmpfs", "-o", "size=1g", "anonshm-test", sys.argv[3]]
    subprocess.run(mount, check=True)
"""
    + IN_CGROUP
)


@dataclass(frozen=True)
class Refusal:
    """What the child's first, too large reserve raised, and what came after."""

    code: str  # errno's name, or "created"
    filename: str | None
    message: str
    fds_unchanged: bool
    small_reserved: int


def _run_in_cgroup(
    cgroup: MemoryCgroup,
    size: int,
    directory: str = "",
    *,
    code: str = IN_CGROUP,
    prefix: tuple[str, ...] = (),
) -> Refusal:
    procs = str(cgroup.leaf / "cgroup.procs")
    done = subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code), procs, str(size), directory],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        pytest.fail(
            f"the child died of {name} ({cgroup.oom_kills()} OOM kills in its cgroup):"
            f" reserve=True let the memory run out instead of raising\n{done.stderr}"
        )
    assert done.returncode == 0, done.stderr
    assert cgroup.oom_kills() == 0
    report = json.loads(done.stdout)
    errno_name, filename, message = report["error"]
    return Refusal(
        errno_name, filename, message or "", report["fds_unchanged"], report["small_reserved"]
    )


@pytest.mark.root
def test_reserving_more_than_the_machine_has_is_enomem_naming_meminfo(
    memory_cgroup: Callable[..., MemoryCgroup],
) -> None:
    # The cgroup only bounds a regression; the machine's own limits refuse first.
    cgroup = memory_cgroup(256 * MIB)
    report = _run_in_cgroup(cgroup, 1 << 50)
    assert "asked for 1 PiB (1125899906842624 bytes)" in report.message
    assert report.fds_unchanged
    assert report.small_reserved >= 16 * MIB
    if IN_DEV_SHM:  # the tmpfs that holds the objects is the first limit
        assert (report.code, report.filename) == (errno.errorcode[errno.ENOSPC], "/dev/shm")
        return
    assert report.code == errno.errorcode[errno.ENOMEM]
    assert report.filename == "/proc/meminfo"
    assert "MemAvailable" in report.message or "CommitLimit" in report.message


@pytest.mark.root
@pytest.mark.parametrize(
    "on_parent", [False, True], ids=["limit-on-its-cgroup", "limit-on-an-ancestor"]
)
def test_reserving_more_than_the_memory_cgroup_allows_is_enomem_naming_its_limit(
    memory_cgroup: Callable[..., MemoryCgroup], on_parent: bool
) -> None:
    cgroup = memory_cgroup(64 * MIB, on_parent=on_parent)
    report = _run_in_cgroup(cgroup, 256 * MIB)
    assert report.code == errno.errorcode[errno.ENOMEM]
    assert report.filename == cgroup.limit_file
    assert "asked for 256 MiB (268435456 bytes)" in report.message
    assert "is 64 MiB (67108864 bytes)" in report.message
    assert report.fds_unchanged
    # What fits under the limit is still reserved, every page of it.
    assert report.small_reserved >= 16 * MIB


@pytest.mark.root
def test_reserve_in_a_tmpfs_directory_counts_against_the_memory_cgroup(
    memory_cgroup: Callable[..., MemoryCgroup], tmp_path: Path
) -> None:
    # tmpfs pages are memory: the tmpfs has room for 256 MiB, the cgroup has not.
    unshare = need_root_and_unshare()
    cgroup = memory_cgroup(64 * MIB)
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    report = _run_in_cgroup(
        cgroup,
        256 * MIB,
        str(mount),
        code=IN_CGROUP_ON_TMPFS,
        prefix=(unshare, "-m", "--propagation", "private"),
    )
    assert report.code == errno.errorcode[errno.ENOMEM]
    assert report.filename == cgroup.limit_file
    assert "asked for 256 MiB (268435456 bytes)" in report.message
    assert report.fds_unchanged
    assert report.small_reserved >= 16 * MIB
    assert list(mount.iterdir()) == []


@pytest.mark.parametrize(
    ("root", "path", "expected"),
    [
        ("/", "/a/b", "/mnt/cg/a/b"),
        ("/", "/", "/mnt/cg"),
        ("/docker/x", "/docker/x", "/mnt/cg"),
        ("/docker/x", "/docker/x/y", "/mnt/cg/y"),
        ("/docker/x", "/docker/xy", None),
        ("/", "/../outside", None),
    ],
    ids=["nested", "root", "mount-root", "under-mount-root", "other-branch", "outside-namespace"],
)
def test_a_cgroup_path_is_found_under_the_mount_of_its_hierarchy(
    root: str, path: str, expected: str | None
) -> None:
    from anonshm import _limits

    assert _limits._inside("/mnt/cg", root, path) == expected


def test_mount_points_with_spaces_are_unescaped() -> None:
    from anonshm import _limits

    assert _limits._unescape(r"/mnt/a\040b\134c") == "/mnt/a b\\c"
    assert _limits._unescape(r"/mnt/odd\x") == r"/mnt/odd\x"
