"""Both protocols end to end with real children: spawn/inherited and export/from_token."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from subprocess import PIPE
from typing import TYPE_CHECKING, Any, assert_type

import pytest

from anonshm import (
    AnonymousMemory,
    InheritError,
    Protection,
    SharedChild,
    TokenError,
    spawn,
)
from tests._faults import Interrupted, each_line, raise_interrupted, settled, where
from tests.conftest import (
    FEATURES,
    assert_freeze_refused,
    child_env,
    is_closed,
    open_fds,
    python_child,
)

if TYPE_CHECKING:
    from pathlib import Path

REPORT = """
    import json, os, sys
    from anonshm import AnonymousMemory
    names = sys.argv[1:]
    report = {"env": os.environ.get("NSPR_INHERIT_FDS"), "fds": sorted(
        int(fd) for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))}
    for name in names:
        with AnonymousMemory.inherited(name) as mem, mem.map() as view:
            report[name] = [mem.size, mem.protection.name, view[:8].decode()]
            if mem.protection.name == "READ_WRITE":
                view[8:16] = b"answered"
    print(json.dumps(report))
"""


def run_reporter(
    inherit: Iterable[AnonymousMemory] | Mapping[str, AnonymousMemory],
    *names: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    argv = python_child(REPORT, *names)
    env = child_env() if env is None else env
    with spawn(argv, inherit=inherit, stdout=subprocess.PIPE, env=env) as child:
        out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out is not None
    result: dict[str, Any] = json.loads(out)
    result["inherited"] = dict(child.inherited)  # the numbers the child got
    return result


def test_child_reads_and_answers_through_inherited_memory() -> None:
    with AnonymousMemory(4096, name="frame") as mem, mem.map() as view:
        view[:8] = b"question"
        report = run_reporter([mem], "frame")
        assert report["frame"] == [4096, "READ_WRITE", "question"]
        assert view[8:16] == b"answered"


def test_child_holds_only_stdio_and_exactly_what_it_inherited(no_leaks: None) -> None:
    with AnonymousMemory(10, name="a") as a, AnonymousMemory(10, name="b") as b:
        with AnonymousMemory(10, name="not-passed") as other:
            report = run_reporter([a, b])
            assert other.fileno() not in report["fds"]
        fds = report["inherited"]
        assert list(fds) == ["a", "b"]
        assert report["env"] == f"a:1:0x{fds['a']:x}:b:1:0x{fds['b']:x}"
        assert set(report["fds"]) == {0, 1, 2, *fds.values()}
        # The duplicates made for the child are closed again in the parent.
        assert not set(fds.values()) & {a.fileno(), b.fileno()}


def test_mapping_form_keys_memories_by_the_given_name() -> None:
    with AnonymousMemory(32, name="ignored") as mem:
        report = run_reporter({"chosen": mem}, "chosen")
    assert report["chosen"] == [32, "READ_WRITE", "\0" * 8]
    assert report["env"] == f"chosen:1:0x{mem_fd(report):x}"


def mem_fd(report: dict[str, Any]) -> int:
    extra = set(report["fds"]) - {0, 1, 2}
    assert len(extra) == 1
    return int(extra.pop())


def test_protection_travels_with_the_descriptor() -> None:
    with AnonymousMemory(16, name="ro") as mem:
        with mem.map() as view:
            view[:8] = b"readonly"
        with mem.duplicate(protection=Protection.READ_ONLY) as ro:
            report = run_reporter([ro], "ro")
        assert report["ro"] == [16, "READ_ONLY", "readonly"]
        if not FEATURES.freeze:
            assert_freeze_refused(mem)
            return
        mem.freeze()
        report = run_reporter([mem], "ro")
        assert report["ro"] == [16, "READ_ONLY", "readonly"]


def test_stale_inherit_fds_is_replaced_or_removed() -> None:
    env = child_env(NSPR_INHERIT_FDS="stale:1:0x63")
    with AnonymousMemory(8, name="fresh") as mem:
        report = run_reporter([mem], env=env)
        assert report["env"] == f"fresh:1:0x{report['inherited']['fresh']:x}"
    assert run_reporter([], env=env)["env"] is None


def test_stale_inherit_fds_from_os_environ_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSPR_INHERIT_FDS", "stale:1:0x63")
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    with AnonymousMemory(8, name="fresh") as mem:
        with spawn(python_child(REPORT), inherit=[mem], stdout=subprocess.PIPE, env=None) as c:
            out, _ = c.communicate(timeout=60)
        assert out is not None
        assert json.loads(out)["env"] == f"fresh:1:0x{c.inherited['fresh']:x}"


def test_popen_arguments_pass_through(tmp_path: Path) -> None:
    code = "import os, sys; print(os.getcwd(), os.environ['EXTRA'], sys.stdin.read())"
    with (
        AnonymousMemory(8) as mem,
        spawn(
            python_child(code),
            inherit=[mem],
            cwd=tmp_path,
            env=child_env(EXTRA="yes"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child,
    ):
        assert isinstance(child, SharedChild)
        assert child.pid > 0
        assert child.stdin is not None
        assert child.stdout is not None
        assert list(child.inherited) == ["anonshm"]
        out, err = child.communicate("input", timeout=60)
    assert out is not None
    assert out.split() == [str(tmp_path), "yes", "input"]
    assert err == ""
    assert child.returncode == 0


def test_pass_fds_of_the_caller_are_kept(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        code = f"import os; os.write({write_end}, b'hi')"
        with (
            AnonymousMemory(8) as mem,
            spawn(
                python_child(code), inherit=[mem], pass_fds=[write_end], env=child_env()
            ) as child,
        ):
            child.wait(timeout=60)
        assert child.returncode == 0
        assert os.read(read_end, 2) == b"hi"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_duplicate_names_are_a_value_error() -> None:
    with AnonymousMemory(8, name="same") as a, AnonymousMemory(8, name="same") as b:
        with pytest.raises(ValueError, match="same"):
            spawn(["true"], inherit=[a, b])


@pytest.mark.parametrize("inherit", [[b"x"], ["name"], [None]], ids=repr)
def test_inherit_of_non_memories_is_a_type_error(inherit: list[object]) -> None:
    with pytest.raises(TypeError, match="AnonymousMemory"):
        spawn(["true"], inherit=inherit)  # type: ignore[arg-type]


def test_a_bare_memory_is_a_type_error_with_a_hint() -> None:
    with AnonymousMemory(8) as mem, pytest.raises(TypeError, match=r"inherit=\[mem\]"):
        spawn(["true"], inherit=mem)  # type: ignore[call-overload]


def test_bad_mapping_names_are_refused() -> None:
    with AnonymousMemory(8) as mem:
        with pytest.raises(ValueError, match="':'"):
            spawn(["true"], inherit={"a:b": mem})
        with pytest.raises(TypeError, match="name must be a str"):
            spawn(["true"], inherit={3: mem})  # type: ignore[arg-type]


def test_a_closed_memory_cannot_be_inherited_and_is_named(no_leaks: None) -> None:
    mem = AnonymousMemory(8, name="x")
    mem.close()
    with AnonymousMemory(8, name="open") as other:
        with pytest.raises(ValueError, match=r"^spawn cannot pass memory 'x': it is closed$"):
            spawn(["true"], inherit=[other, mem])
        with pytest.raises(ValueError, match=r"^spawn cannot pass memory 'key': it is closed$"):
            spawn(["true"], inherit={"first": other, "key": mem})


def test_child_outlives_the_parents_close() -> None:
    code = """
        import sys
        from anonshm import AnonymousMemory
        with AnonymousMemory.inherited("long") as mem, mem.map() as view:
            sys.stdout.write("ready\\n"); sys.stdout.flush()
            sys.stdin.readline()  # the parent closes its handle meanwhile
            print(view[:5].decode())
    """
    with AnonymousMemory(64, name="long") as mem:
        with mem.map() as view:
            view[:5] = b"alive"
        child = spawn(
            python_child(code),
            inherit=[mem],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
    assert mem.closed
    with child:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        out, _ = child.communicate("go\n", timeout=60)
    assert out is not None
    assert out.strip() == "alive"
    assert child.returncode == 0


def test_with_block_kills_and_reaps_the_child_when_it_raises() -> None:
    with AnonymousMemory(8) as mem, pytest.raises(RuntimeError, match="boom"):
        with spawn(["sleep", "60"], inherit=[mem]) as child:
            raise RuntimeError("boom")
    assert child.returncode == -signal.SIGKILL


def test_with_block_waits_on_normal_exit() -> None:
    with spawn([sys.executable, "-c", "import time; time.sleep(0.2)"]) as child:
        assert child.poll() is None
    assert child.returncode == 0


def test_terminate_kill_and_signals() -> None:
    with spawn(["sleep", "60"]) as child:
        child.terminate()
        assert child.wait(timeout=10) == -signal.SIGTERM
    # SIGINT only once the child runs: between fork and exec it still has Python's own
    # handler, which takes the signal, and exec then starts a sleep that never got it.
    with spawn(["sh", "-c", "echo ready; exec sleep 60"], stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        # The shell may still be on its way to the exec, with a SIGINT handler of its
        # own that takes the signal (dash, under load): send it until sleep gets it.
        for _ in range(40):
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                continue
        assert child.wait(timeout=10) == -signal.SIGINT
    assert "returncode=-2" in repr(child)


def test_a_missing_program_raises_and_leaks_nothing(no_leaks: None) -> None:
    with AnonymousMemory(8) as mem, pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/program"], inherit=[mem])


def test_second_protocol_token_in_a_child() -> None:
    code = """
        import sys
        from anonshm import AnonymousMemory
        with AnonymousMemory.from_token(sys.argv[1]) as mem, mem.map() as view:
            assert view[:4] == b"ping", view[:4]
            view[4:8] = b"pong"
            print(mem.size, mem.name, mem.protection.name)
    """
    with AnonymousMemory(100, name="tok") as mem, mem.map() as view:
        view[:4] = b"ping"
        token = mem.export()
        assert token == f"{mem.fileno()}:1"
        out = subprocess.run(
            python_child(code, token),
            pass_fds=[mem.fileno()],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        # A token carries no name: the kernel's, where it records one, else the default.
        name = "tok" if FEATURES.names else "anonshm"
        assert out.split() == ["100", name, "READ_WRITE"]
        assert view[4:8] == b"pong"


def test_a_token_is_meaningless_in_a_child_that_did_not_inherit_it() -> None:
    code = """
        import sys
        from anonshm import AnonymousMemory, TokenError
        try:
            AnonymousMemory.from_token(sys.argv[1])
        except TokenError as exc:
            print("refused:", exc)
    """
    with AnonymousMemory(100) as mem:
        token = f"{mem.fileno() + 50}:1"
        out = subprocess.run(
            python_child(code, token), env=child_env(), capture_output=True, text=True, check=True
        ).stdout
    assert out.startswith("refused:")
    assert "not open" in out


def test_inherited_twice_gives_independent_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    with AnonymousMemory(16, name="twice") as mem:
        monkeypatch.setenv("NSPR_INHERIT_FDS", f"twice:1:0x{mem.fileno():x}")
        first = AnonymousMemory.inherited("twice")
        second = AnonymousMemory.inherited("twice")
        assert len({first.fileno(), second.fileno(), mem.fileno()}) == 3
        first.close()
        second.close()
        assert not is_closed(mem.fileno())


def test_inherited_reports_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSPR_INHERIT_FDS", raising=False)
    with pytest.raises(InheritError, match="not set"):
        AnonymousMemory.inherited("x")
    monkeypatch.setenv("NSPR_INHERIT_FDS", "a:1:0x3:b:1:0x4")
    with pytest.raises(InheritError, match="names only 'a', 'b'"):
        AnonymousMemory.inherited("c")
    monkeypatch.setenv("NSPR_INHERIT_FDS", "a:1:0x3:b:1")
    with pytest.raises(InheritError, match="malformed"):
        AnonymousMemory.inherited("a")
    monkeypatch.setenv("NSPR_INHERIT_FDS", "sock:2:0x0")
    with pytest.raises(InheritError, match="type 2"):
        AnonymousMemory.inherited("sock")
    with pytest.raises(ValueError, match="':'"):
        AnonymousMemory.inherited("bad:name")


def test_inherited_names_a_descriptor_that_is_not_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    try:
        monkeypatch.setenv("NSPR_INHERIT_FDS", f"p:1:0x{read_end:x}")
        with pytest.raises(InheritError, match="a pipe"):
            AnonymousMemory.inherited("p")
        os.fstat(read_end)  # still open: never closed by the failed import
    finally:
        os.close(read_end)
        os.close(write_end)


def test_token_errors_are_value_errors_and_inherit_errors_lookup_errors() -> None:
    assert issubclass(TokenError, ValueError)
    assert issubclass(InheritError, LookupError)


def test_ctrl_c_during_wait_kills_and_reaps_the_child() -> None:
    # Ctrl-C inside Popen.wait() makes Popen's own exit skip waiting; ours must reap.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the wait is interrupted
            with spawn(["sleep", "60"]) as child:
                signal.setitimer(signal.ITIMER_REAL, 0.2)
                child.wait()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # no zombie left to reap


def test_close_fds_false_with_memories_is_refused() -> None:
    with AnonymousMemory(8) as mem, pytest.raises(ValueError, match="close_fds=True"):
        spawn(["true"], inherit=[mem], close_fds=False)


def test_a_spawn_leaves_no_duplicate_behind(no_leaks: None) -> None:
    with AnonymousMemory(8) as mem, spawn(["true"], inherit=[mem]) as child:
        child.wait(timeout=60)


def _children() -> set[int]:
    """This process's children, reaped or not (zombies are listed until reaped)."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as children:
            pids.update(int(pid) for pid in children.read().split())
    return pids


def _reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # a zombie already
    os.waitpid(pid, 0)


def test_ctrl_c_at_any_line_of_spawn_leaks_nothing_and_closes_nothing_foreign() -> None:
    # Every line of anonshm that spawn runs gets a KeyboardInterrupt in turn.  Whatever
    # line it lands on, the duplicates are closed, the memories stay open, and a child
    # that was started but cannot be returned is killed and reaped.
    with AnonymousMemory(8, name="one") as one, AnonymousMemory(8, name="two") as two:
        own = {one.fileno(), two.fileno()}
        helpers = _children()  # e.g. multiprocessing's forkserver, from earlier tests
        gc.collect()
        before = open_fds()
        outcomes: list[type[BaseException] | None] = []

        def dispose(result: object) -> None:
            assert isinstance(result, SharedChild)
            with result as child:
                child.kill()

        def check(outcome: type[BaseException] | None) -> None:
            left = _children() - helpers
            for pid in left:
                _reap(pid)
            assert outcome in (None, Interrupted), f"raised {outcome} at {where}"
            assert not left, f"child left running: interrupted at {where}"
            assert settled(open_fds, before), f"descriptors leaked: interrupted at {where}"
            assert {one.fileno(), two.fileno()} == own
            assert not any(is_closed(fd) for fd in own), f"memory closed at {where}"
            outcomes.append(outcome)

        lines = each_line(
            lambda: lambda: spawn(["sleep", "60"], inherit=[one, two], stdout=subprocess.PIPE),
            raise_interrupted,
            check,
            dispose,
        )
    assert lines > 10  # the loop, the environment, Popen, the return
    assert outcomes.count(Interrupted) == lines


def child_environ(
    inherit: list[AnonymousMemory], env: Mapping[str, str] | Mapping[bytes, bytes] | None
) -> tuple[list[bytes], dict[str, int]]:
    """The child's environment exactly as exec gave it (every entry, in order)."""
    cat = shutil.which("cat")
    assert cat is not None
    with spawn([cat, "/proc/self/environ"], inherit=inherit, env=env, stdout=PIPE) as child:
        out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    return out.split(b"\0")[:-1], dict(child.inherited)


def inherit_entries(environ: list[bytes]) -> list[bytes]:
    return [entry for entry in environ if entry.startswith(b"NSPR_INHERIT_FDS=")]


def test_os_environb_gets_one_fresh_entry_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSPR_INHERIT_FDS", "stale:1:0x63")
    monkeypatch.setenv("ANONSHM_KEPT", "yes")
    with AnonymousMemory(8, name="fresh") as mem:
        environ, fds = child_environ([mem], os.environb)
    assert inherit_entries(environ) == [f"NSPR_INHERIT_FDS=fresh:1:0x{fds['fresh']:x}".encode()]
    assert b"ANONSHM_KEPT=yes" in environ
    environ, _ = child_environ([], os.environb)
    assert inherit_entries(environ) == []
    assert b"ANONSHM_KEPT=yes" in environ


@pytest.mark.parametrize(
    "env",
    [
        {b"NSPR_INHERIT_FDS": b"stale:1:0x63", b"OTHER": b"kept"},
        {"NSPR_INHERIT_FDS": "stale:1:0x63", "OTHER": "kept"},
        {b"NSPR_INHERIT_FDS": b"stale:1:0x63", "NSPR_INHERIT_FDS": "stale:1:0x64", "OTHER": "kept"},
        {"NSPR_INHERIT_FDS": "stale:1:0x63", b"OTHER": b"kept"},
        {b"OTHER": b"kept"},
    ],
    ids=["bytes", "str", "both-forms", "mixed-keys", "bytes-without"],
)
def test_any_environment_ends_with_one_right_entry(env: dict[Any, Any]) -> None:
    original = dict(env)
    with AnonymousMemory(8, name="fresh") as mem:
        environ, fds = child_environ([mem], env)
        assert inherit_entries(environ) == [f"NSPR_INHERIT_FDS=fresh:1:0x{fds['fresh']:x}".encode()]
        assert b"OTHER=kept" in environ
        environ, _ = child_environ([], env)
        assert inherit_entries(environ) == []
        assert b"OTHER=kept" in environ
    assert env == original  # the caller's mapping is left as it was


def test_a_stale_variable_in_os_environ_is_removed_without_memories(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NSPR_INHERIT_FDS", "stale:1:0x63")
    monkeypatch.setenv("ANONSHM_KEPT", "yes")
    environ, _ = child_environ([], None)
    assert inherit_entries(environ) == []
    assert b"ANONSHM_KEPT=yes" in environ


def _churn(stop: threading.Event) -> None:
    """Set and delete variables as fast as one thread can, until ``stop``."""
    names = [f"ANONSHM_CHURN_{index}" for index in range(64)]
    while not stop.is_set():
        for name in names:
            os.environ[name] = "x"
        for name in names:
            del os.environ[name]


@pytest.mark.parametrize("with_memory", [False, True], ids=["no-memory", "memory"])
def test_another_thread_changing_the_environment_never_makes_spawn_raise(
    with_memory: bool,
) -> None:
    # Copying os.environ key by key raised KeyError (14 in 300); handing Popen env=None
    # made the exec fail with EFAULT (53 in 300: the C environment, half rewritten by
    # the other thread's putenv at the fork).
    tries, failures = 300, list[Exception]()
    stop = threading.Event()
    churn = threading.Thread(target=_churn, args=(stop,))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: inside the copy, if it can be split
    with AnonymousMemory(8, name="racy") as mem:
        inherit = [mem] if with_memory else []
        churn.start()
        try:
            for _ in range(tries):
                try:
                    with spawn(["true"], inherit=inherit) as child:
                        child.wait(timeout=60)
                except (KeyError, OSError) as exc:
                    failures.append(exc)
        finally:
            stop.set()
            churn.join()
            sys.setswitchinterval(interval)
    assert failures == [], f"{len(failures)} of {tries} spawns raised: {failures[:3]}"


def test_communicate_and_env_are_typed_as_popens() -> None:
    # mypy --strict checks this file: communicate() is tuple[Any, Any] as typeshed's
    # Popen.communicate (the docstring's `communicate()[0].strip()` needs no narrowing
    # from an Optional), and env takes a bytes-keyed environment as Popen does.
    with spawn(["echo", "hi"], stdout=subprocess.PIPE, env=os.environb) as child:
        result = child.communicate(timeout=30)
    assert_type(result, tuple[Any, Any])
    assert result[0].strip() == b"hi"
    assert result[1] is None
