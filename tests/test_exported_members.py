from __future__ import annotations

import anonshm


def test_all_is_exactly_the_public_names() -> None:
    public = {name for name in dir(anonshm) if not name.startswith("_")}
    assert public == set(anonshm.__all__)
    assert anonshm.__all__ == sorted(anonshm.__all__)
    assert set(anonshm.__all__) >= {
        "AnonShmError",
        "AnonymousMemory",
        "ForChild",
        "InheritError",
        "MemoryMap",
        "Protection",
        "SharedChild",
        "TokenError",
        "spawn",
    }


def test_every_public_name_is_documented() -> None:
    for name in anonshm.__all__:
        doc = getattr(anonshm, name).__doc__
        assert doc, name
        assert ">>> " in doc, f"{name} has no example"
