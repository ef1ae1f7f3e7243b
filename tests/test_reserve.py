"""reserve=True: a full filesystem is an OSError at creation, never a SIGBUS later.

The real demonstration needs a small filesystem: as root, in a private mount namespace
(``unshare -m``), a child mounts a 1 MiB tmpfs and tries to put 2 MiB of memory there.
Without ``reserve`` the creation succeeds (the file is sparse) and the writer dies of
SIGBUS when the pages run out; with it, creation fails with ENOSPC and leaves nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory
from tests.conftest import child_env

if TYPE_CHECKING:
    from pathlib import Path

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


def _need_root_and_unshare() -> str:
    """The path of unshare; skip (fail on CI) when this machine cannot run the test."""
    unshare = shutil.which("unshare")
    reason = None
    if os.geteuid() != 0:
        reason = "needs root to mount a tmpfs in a private mount namespace"
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


@pytest.mark.root
def test_reserve_on_a_full_filesystem_fails_at_creation_instead_of_sigbus(
    tmp_path: Path,
) -> None:
    unshare = _need_root_and_unshare()
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
    # More than any disk holds: posix_fallocate fails after the file was made.
    with pytest.raises(OSError) as caught:
        AnonymousMemory(2**60, directory=tmp_path, reserve=True)
    assert caught.value.errno in (errno.ENOSPC, errno.EFBIG)
    assert list(tmp_path.iterdir()) == []
