"""The ecosystem examples run as a user would run them, and do what they say."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    assert not result.stderr, result.stderr
    return result.stdout


# Python 3.14 makes forkserver the default on Linux: every start method this platform has.
@pytest.mark.parametrize(
    "args",
    [
        (),
        *(
            ("--start-method", method, "--workers", "2")
            for method in multiprocessing.get_all_start_methods()
        ),
    ],
    ids=str,
)
def test_numpy_pool_fills_the_shared_array_from_workers(args: tuple[str, ...]) -> None:
    pytest.importorskip("numpy")
    out = _run("numpy_pool.py", *args)
    lines = out.splitlines()
    slices = 2 * int(args[-1]) if args else 8  # two tasks per worker, 4 workers by default
    assert f"filled {slices} slices of a 64x1000 float64 array" in lines[0]
    assert len([line for line in lines if line.lstrip().startswith("rows ")]) == slices
    assert lines[-1] == "parent checked every value: ok"


@pytest.mark.parametrize(
    "args",
    [(), ("--backend", "multiprocessing", "--workers", "3")],
    ids=["loky", "multiprocessing"],
)
def test_joblib_pool_fills_the_shared_table_from_workers(args: tuple[str, ...]) -> None:
    pytest.importorskip("joblib")
    out = _run("joblib_pool.py", *args)
    lines = out.splitlines()
    slices = 4 * int(args[-1]) if args else 8  # four tasks per worker, 2 workers by default
    backend = args[1] if args else "loky"
    assert f"({backend}) filled {slices} slices of a table of 4096 int64" in lines[0]
    assert len([line for line in lines if line.lstrip().startswith("values ")]) == slices
    assert lines[-1] == "parent checked every value: ok"


# The example's client receives with the default checks, which refuse every memory a
# backend without seals makes; the fix is in the example (see the posix-tests report).
@pytest.mark.skipif(
    sys.platform == "win32",
    reason="Windows sockets carry no handles: send() raises AnonShmError, asserted in "
    "tests/windows/test_public.py::test_what_windows_cannot_do_is_a_clear_error",
)
def test_socket_handoff_reaches_a_client_it_did_not_pass_anything_to() -> None:
    lines = _run("socket_handoff.py").splitlines()
    server = [line for line in lines if line.startswith("[server ")]
    client = [line for line in lines if line.startswith("[client ")]
    assert {line.split()[1] for line in server} != {line.split()[1] for line in client}
    assert any("reads b'hello from the server'" in line for line in client)
    assert any("now holds b'hello back from the client'" in line for line in server)
    assert lines[-1] == "ok: the server read the client's answer"
