"""Every protocol example runs as a user would run it, and succeeds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env


@pytest.mark.parametrize("script", ["first_protocol.py", "second_protocol.py"])
def test_protocol_example_runs(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "client:" in result.stdout
    assert "server:" in result.stdout


def test_cli_demo_runs_both_protocols() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anonshm", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   first (inheritance)" in result.stdout
    assert "ok   second (token)" in result.stdout
    assert result.stdout.count("[child ") >= 6


def test_cli_info_reports_the_backend_and_features() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anonshm", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=True,
    )
    for label in (
        "backend",
        "memfd_create",
        "freeze (F_SEAL_FUTURE_WRITE)",
        "hugetlb",
        "transparent hugepages for shmem",
        "O_TMPFILE",
    ):
        assert label in result.stdout
    assert "linux: memfd_create by default" in result.stdout
