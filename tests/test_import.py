"""What ``import anonshm`` loads: a child that only maps memory pays for nothing else."""

from __future__ import annotations

import json

from tests.conftest import run_child


def test_import_loads_no_typing_subprocess_socket_or_multiprocessing() -> None:
    code = """
        import json, sys
        before = set(sys.modules)
        import anonshm
        with anonshm.AnonymousMemory(8) as m:
            with m.map() as view:
                view[0] = 1
        print(json.dumps(sorted(set(sys.modules) - before)))
    """
    loaded = set(json.loads(run_child(code).stdout))
    heavy = {"typing", "typing_extensions", "subprocess", "socket", "multiprocessing", "re"}
    assert not loaded & heavy, sorted(loaded & heavy)
    assert "anonshm._spawn" not in loaded


def test_the_lazy_names_load_on_first_use() -> None:
    code = """
        import anonshm
        print(anonshm.spawn.__module__, anonshm.SharedChild.__name__, "spawn" in dir(anonshm))
    """
    assert run_child(code).stdout.split() == ["anonshm._spawn", "SharedChild", "True"]
