"""What ``import anonshm`` loads: a child that only maps memory pays for nothing else."""

from __future__ import annotations

import json

from anonshm import AnonymousMemory
from anonshm._wire import INHERIT_VARIABLE, format_inherit_fds
from tests.conftest import FEATURES, child_env, run_child


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
    heavy |= {"enum", "inspect", "annotationlib"}  # what the hints need waits for typing
    assert not loaded & heavy, sorted(loaded & heavy)
    assert "anonshm._spawn" not in loaded


def test_the_lazy_names_load_on_first_use() -> None:
    code = """
        import anonshm
        print(anonshm.spawn.__module__, anonshm.SharedChild.__name__, "spawn" in dir(anonshm))
    """
    assert run_child(code).stdout.split() == ["anonshm._spawn", "SharedChild", "True"]


def test_a_child_importing_and_mapping_memory_loads_only_c_modules_beside_anonshm() -> None:
    # The fresh child of the first and second protocols: every module it loads beyond
    # a bare interpreter is start-up time on every handoff (benchmarks/, fresh child).
    with AnonymousMemory(8, name="lean") as mem:
        code = """
            import sys
            before = set(sys.modules)
            from anonshm import AnonymousMemory
            with AnonymousMemory.inherited("lean") as a, a.map() as view:
                view[0] = 1
            with AnonymousMemory.from_token(sys.argv[1]) as b, b.map() as view:
                assert view[0] == 1
            print(" ".join(sorted(set(sys.modules) - before)))
        """
        env = {**child_env(), INHERIT_VARIABLE: format_inherit_fds([("lean", mem.fileno())])}
        loaded = set(
            run_child(code, mem.export(), env=env, pass_fds=(mem.fileno(),)).stdout.split()
        )
    ours = {name for name in loaded if name == "anonshm" or name.startswith("anonshm.")}
    # The posix backend opens by name with CPython's own shm_open (a C module too).
    backend = {"_posixshmem"} if FEATURES.name == "posix" else set()
    assert loaded - ours <= {"errno", "fcntl", "mmap", *backend}, sorted(loaded - ours)
    assert "anonshm._protection" not in ours  # enum only when a Protection is asked for


def test_protection_is_loaded_on_first_use_and_is_the_enum() -> None:
    code = """
        import sys
        import anonshm
        assert "enum" not in sys.modules
        from anonshm import AnonymousMemory, Protection
        with AnonymousMemory(8, protection=Protection.WRITE_COPY) as mem:
            prot = mem.protection
            print(type(prot).__name__, prot.name, anonshm.Protection is Protection)
    """
    assert run_child(code).stdout.split() == ["Protection", "WRITE_COPY", "True"]
