"""Every protocol example and the CLI run as a user would run them, and succeed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import FEATURES, PS_REFUSAL, ROOT, child_env


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("script", ["first_protocol.py", "second_protocol.py"])
def test_protocol_example_runs(script: str) -> None:
    out = run(str(ROOT / "examples" / script))
    assert "client:" in out
    assert "server:" in out


def test_cli_demo_runs_both_protocols() -> None:
    out = run("-m", "anonshm", "demo")
    assert "ok   first (inheritance)" in out
    assert "ok   second (token)" in out
    assert out.count("[child ") >= 6


def test_cli_info_reports_the_backend_and_features() -> None:
    out = run("-m", "anonshm", "info")
    from anonshm._backend import backend

    features = backend.FEATURES
    for label in (
        "backend",
        "read-only descriptors",
        "fixed size (kernel-enforced)",
        "freeze (kernel-enforced)",
        "hugetlb",
        "transparent hugepages for shmem",
        "O_TMPFILE",
    ):
        assert label in out
    assert f"{features.name}: {features.creation}" in out
    (freeze,) = (line.split()[-1] for line in out.splitlines() if "freeze (kernel" in line)
    assert freeze == ("yes" if features.freeze else "no")


@pytest.mark.skipif(
    sys.platform == "win32", reason="a pipe whose reader is gone is EPIPE only on POSIX"
)
@pytest.mark.parametrize("command", ["info", "ps"])
def test_cli_stops_quietly_when_its_reader_goes_away(command: str) -> None:
    # `python -m anonshm ps | head -1`: no traceback, the exit status of a SIGPIPE.
    reader, writer = os.pipe()
    os.close(reader)  # every write fails with EPIPE (Python ignores SIGPIPE)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "anonshm", command],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=child_env(),
            check=False,
        )
    finally:
        os.close(writer)
    if command == "ps" and not FEATURES.names:  # refused before it writes a thing
        assert done.returncode == 1
        assert PS_REFUSAL in done.stderr
        return
    assert done.stderr == ""
    assert done.returncode == 141


@pytest.mark.parametrize("args", [(), ("300", "65536")], ids=["default", "64KiB-frames"])
def test_channel_worker_example_streams_and_checks_every_frame(args: tuple[str, ...]) -> None:
    script = str(ROOT / "examples" / "channel_worker.py")
    if not FEATURES.sockets:  # Windows: no channels yet; the clear refusal instead
        result = subprocess.run(
            [sys.executable, script, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_env(),
            check=False,
        )
        assert result.returncode != 0
        assert "backend has no channels" in result.stderr
        return
    out = run(script, *args)
    assert "ok=True" in out
    assert "worker: checked" in out
