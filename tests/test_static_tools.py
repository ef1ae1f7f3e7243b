"""Editors see what anonshm exports, though it imports cheaply (see anonshm/_compat.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import anonshm

jedi = pytest.importorskip("jedi", reason="jedi is a dev dependency: pip install -e '.[dev]'")
ROOT = Path(__file__).resolve().parent.parent


def test_jedi_completes_every_public_name() -> None:
    script = jedi.Script("import anonshm\nanonshm.", path=str(ROOT / "probe.py"))
    completed = {completion.name for completion in script.complete(2, len("anonshm."))}
    assert set(anonshm.__all__) <= completed


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("m.protection", "Protection"),
        ("m.map()", "MemoryMap"),
        ("anonshm.spawn(['x'], inherit=[m])", "SharedChild"),
    ],
)
def test_jedi_infers_what_the_annotations_name(code: str, expected: str) -> None:
    source = f"import anonshm\nm = anonshm.AnonymousMemory(1)\n{code}"
    script = jedi.Script(source, path=str(ROOT / "probe.py"))
    inferred = {name.name for name in script.infer(3, len(code))}
    assert expected in inferred
