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


def test_jedi_completes_every_public_name_after_from_import() -> None:
    source = "from anonshm import "
    script = jedi.Script(source, path=str(ROOT / "probe.py"))
    completed = {completion.name for completion in script.complete(1, len(source))}
    assert set(anonshm.__all__) <= completed


@pytest.mark.parametrize("name", anonshm.__all__)
def test_jedi_finds_where_each_public_name_is_defined(name: str) -> None:
    # The lazy names (spawn, SharedChild, PopenOptions, Protection) too: jedi reads the
    # imports that TYPE_CHECKING guards (see anonshm/_compat.py).
    code = f"anonshm.{name}"
    script = jedi.Script(f"import anonshm\n{code}", path=str(ROOT / "probe.py"))
    found = {(d.name, d.module_name) for d in script.infer(2, len(code))}
    assert any(found_name == name and module.startswith("anonshm.") for found_name, module in found)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("m.protection", "Protection"),
        ("m.map()", "MemoryMap"),
        ("m.map().protection", "Protection"),
        ("m.for_child()", "ForChild"),
        ("anonshm.AnonymousMemory.inherited()", "AnonymousMemory"),
        ("anonshm.Protection.READ_ONLY", "READ_ONLY"),
        ("anonshm.spawn(['x'], inherit=[m])", "SharedChild"),
        ("anonshm.spawn(['x']).popen", "Popen"),
    ],
)
def test_jedi_infers_what_the_annotations_name(code: str, expected: str) -> None:
    source = f"import anonshm\nm = anonshm.AnonymousMemory(1)\n{code}"
    script = jedi.Script(source, path=str(ROOT / "probe.py"))
    inferred = {name.name for name in script.infer(3, len(code))}
    assert expected in inferred
