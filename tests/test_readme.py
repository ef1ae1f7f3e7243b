"""The README's opening example runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import FEATURES, ROOT, child_env


def test_readme_first_example_prints_hello_world() -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert code is not None
    result = subprocess.run(
        [sys.executable, "-c", code[1]],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b'hello world'"


def test_readme_streaming_example_runs(tmp_path: Path) -> None:
    if not FEATURES.sockets:  # Windows: no channels yet (tests/windows asserts the refusal)
        return
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# producer\.py\n.*?)```", readme, re.DOTALL)
    assert block is not None
    producer, worker = block[1].split("# worker.py\n")
    (tmp_path / "producer.py").write_text(producer)
    (tmp_path / "worker.py").write_text(worker + "print('worker done')\n")
    result = subprocess.run(
        [sys.executable, "producer.py"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "worker done"
