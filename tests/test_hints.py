"""Run-time tools evaluate the public annotations, though a lean child binds none of them.

``typing.get_type_hints()`` and ``inspect.signature(eval_str=True)`` (what Sphinx
autodoc, typeguard, beartype and pydantic use) over every public name and every public
method or property; in this process and in fresh children, whatever the order in which
``typing`` / ``inspect`` and anonshm load.  See anonshm/_hints.py.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import socket
import subprocess
import types
import typing

import pytest
import typing_extensions

import anonshm
from anonshm import AnonymousMemory, MemoryMap, Protection, SharedChild, spawn
from tests._hints_probe import problems, public_objects
from tests.conftest import child_env, python_child, run_child

PUBLIC = public_objects()


@pytest.mark.parametrize(("label", "obj"), PUBLIC, ids=[label for label, _ in PUBLIC])
def test_tools_evaluate_every_public_annotation(label: str, obj: object) -> None:
    assert problems(label, obj) == []


def test_every_public_name_and_member_is_checked() -> None:
    labels = {label for label, _ in PUBLIC}
    assert set(anonshm.__all__) <= labels
    assert {
        "AnonymousMemory.__init__",
        "AnonymousMemory.protection",
        "AnonymousMemory.inherited",
        "AnonymousMemory.send",
        "AnonymousMemory.__exit__",
        "ForChild.__enter__",
        "MemoryMap.__setitem__",
        "SharedChild.popen",
        "Protection.allows",
        "anonshm.__main__.main",
    } <= labels


def _hints(obj: object) -> dict[str, object]:
    return typing.get_type_hints(obj)


def test_the_annotations_evaluate_to_the_objects_a_checker_sees() -> None:
    assert _hints(vars(AnonymousMemory)["protection"].fget)["return"] is Protection
    assert _hints(AnonymousMemory.inherited)["return"] is typing.Self
    assert _hints(AnonymousMemory.map)["protection"] == Protection | None
    assert _hints(AnonymousMemory.send)["sock"] is socket.socket
    assert _hints(AnonymousMemory.__exit__)["tb"] == types.TracebackType | None
    assert _hints(MemoryMap.__setitem__)["value"] == int | typing_extensions.Buffer
    assert _hints(MemoryMap.__enter__)["return"] is typing.Self
    popen = _hints(vars(SharedChild)["popen"].fget)["return"]
    assert typing.get_origin(popen) is subprocess.Popen
    assert typing.get_args(popen) == (typing.AnyStr,)
    kwargs = inspect.signature(spawn, eval_str=True).parameters["popen_kwargs"]
    assert kwargs.annotation == typing.Unpack[anonshm.PopenOptions]
    main = inspect.signature(anonshm.__main__.main, eval_str=True).parameters["argv"]
    assert main.annotation == collections.abc.Sequence[str] | None


# Each child prints its problems; the probe imports neither typing nor inspect itself.
_ORDERS = {
    "typing-before-anonshm": """
        import typing
        import anonshm
    """,
    "typing-after-anonshm": """
        import sys
        import anonshm
        assert "typing" not in sys.modules
        import typing
    """,
    "inspect-alone": """
        import sys
        import anonshm
        assert "typing" not in sys.modules
        import inspect  # from 3.12 on inspect loads no typing: the hook must
        from tests._hints_probe import unresolved
        # First what import anonshm loaded: the lazy names would bring typing.
        assert unresolved(use_typing=False, lazy=False) == []
    """,
    "typing-by-spawn": """
        import sys
        import anonshm
        assert "typing" not in sys.modules
        anonshm.spawn  # loads _spawn, and typing with it
    """,
    "reload-before-typing": """
        import importlib
        import anonshm, anonshm._memory, anonshm._map
        importlib.reload(anonshm._map)
        importlib.reload(anonshm._memory)
        importlib.reload(anonshm)  # the new classes, and the hook again
        import typing
    """,
    "reload-after-typing": """
        import importlib, typing
        import anonshm, anonshm._memory
        importlib.reload(anonshm._memory)
        importlib.reload(anonshm)
    """,
    "anonshm-imported-afresh": """
        import sys
        import anonshm
        for name in [n for n in sys.modules if n == "anonshm" or n.startswith("anonshm.")]:
            del sys.modules[name]
        import anonshm
        hooks = [f for f in sys.meta_path if getattr(f, "anonshm_reducer_hook", False)]
        assert len(hooks) == 1, hooks
        import typing
    """,
}


@pytest.mark.parametrize("order", _ORDERS)
def test_a_fresh_child_evaluates_every_annotation(order: str) -> None:
    use_typing = order != "inspect-alone"
    code = f"""
{_ORDERS[order]}
        from tests._hints_probe import unresolved
        import json
        print(json.dumps(unresolved(use_typing={use_typing})))
    """
    assert json.loads(run_child(code).stdout) == []


def test_typing_loaded_in_another_thread_during_import_anonshm() -> None:
    code = """
        import json, threading
        start = threading.Barrier(2)
        def load_typing():
            start.wait()
            import typing
        thread = threading.Thread(target=load_typing)
        thread.start()
        start.wait()
        import anonshm
        thread.join()
        from tests._hints_probe import unresolved
        print(json.dumps(unresolved()))
    """
    for _ in range(5):
        assert json.loads(run_child(code).stdout) == []


def test_a_lean_child_binds_nothing_until_typing_loads_and_then_no_socket() -> None:
    with AnonymousMemory(8, name="lean") as mem:
        code = """
            import sys
            from anonshm import AnonymousMemory
            with AnonymousMemory.inherited("lean") as mem, mem.map() as view:
                view[0] = 1
            heavy = sorted({"typing", "inspect", "enum", "anonshm._protection"} & set(sys.modules))
            from tests._hints_probe import bound
            before = sorted(bound("anonshm._memory")) + sorted(bound("anonshm._map"))
            import json  # loads enum (re): after the census
            import typing
            from anonshm import Protection
            after = bound("anonshm._memory")
            print(json.dumps({
                "before": before,
                "heavy": heavy,
                "self": after["Self"] is typing.Self,
                "protection": after["Protection"] is Protection,
                "socket": repr(after["socket"]),
                "loaded": sorted({"socket", "subprocess", "typing_extensions"} & set(sys.modules)),
            }))
        """
        argv = python_child(code)
        with spawn(argv, inherit=[mem], env=child_env(), stdout=subprocess.PIPE) as child:
            out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        found = json.loads(out)
    assert found["before"] == []
    assert found["heavy"] == []
    assert found["self"] is True
    assert found["protection"] is True
    assert "imported when an annotation reads it" in found["socket"]
    assert found["loaded"] == []  # a deferred module stays unloaded until evaluated


def test_typing_loads_as_ever_under_the_hook() -> None:
    # The hook wraps typing's loader only while it runs: no trace is left.
    code = """
        import json, sys
        import anonshm
        import typing
        spec = typing.__spec__
        print(json.dumps([type(typing.__loader__).__name__, type(spec.loader).__name__,
                          typing.__loader__ is spec.loader]))
    """
    plain = "import json, typing; print(json.dumps(type(typing.__loader__).__name__))"
    loader = json.loads(run_child(plain).stdout)  # SourceFileLoader; zipimporter (embedded)
    assert json.loads(run_child(code).stdout) == [loader, loader, True]


def test_an_unknown_name_is_refused_by_name() -> None:
    from anonshm._hints import join

    with pytest.raises(ValueError, match=r"no source for \['Nonesuch'\]"):
        join({}, "Self", "Nonesuch")


def test_a_join_never_replaces_a_name_the_module_defines() -> None:
    from anonshm import _hints

    own = object()
    namespace: dict[str, object] = {"Self": own}
    try:
        _hints.join(namespace, "Self", "Any")  # typing is loaded here: bound at once
        assert namespace == {"Self": own, "Any": typing.Any}
    finally:
        _hints._joined[:] = [entry for entry in _hints._joined if entry[0] is not namespace]


def test_the_binding_survives_in_the_test_process() -> None:
    # The test process loaded typing long before anonshm: every join bound at once.
    from tests._hints_probe import bound

    assert bound("anonshm._memory")["Protection"] is Protection
    assert bound("anonshm._spawn")["TracebackType"] is types.TracebackType
