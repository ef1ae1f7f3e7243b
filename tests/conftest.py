"""Shared fixtures: counting this process's descriptors and mappings, running children."""

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

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent


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


def mapping_lines(needle: str = "memfd:") -> list[str]:
    """Lines of /proc/self/maps that mention ``needle``."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if needle in line]


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
    """Fail the test if it leaves descriptors or memfd mappings behind."""
    gc.collect()
    fds_before, maps_before = open_fds(), mapping_lines()
    yield
    gc.collect()
    assert open_fds() == fds_before, "descriptors leaked"
    assert mapping_lines() == maps_before, "mappings leaked"
