"""The README's opening example runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, child_env


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
