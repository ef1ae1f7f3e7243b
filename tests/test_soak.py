"""A short run of benchmarks/soak.py: nothing grows over thousands of share cycles."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

SOAK = ROOT / "benchmarks" / "soak.py"


@pytest.mark.slow
def test_a_short_soak_grows_nothing() -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "15", "--warmup", "300", "--spawn-every", "25"],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.splitlines()[-1]
    assert summary.startswith("soak: "), done.stdout
    assert "FAIL" not in done.stdout
