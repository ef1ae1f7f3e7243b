"""multiprocessing and concurrent.futures hand the memory itself to their workers."""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import multiprocessing
import multiprocessing.context
import os
import pickle
import sys
from multiprocessing import resource_sharer
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, Protection
from tests._mp_workers import Seen, touch, touch_and_report, touch_slot
from tests.conftest import FEATURES, assert_freeze_refused, run_child

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# Python >= 3.12 warns when forking a process that has threads (pytest's, a pool's);
# the fork start method is what is under test here, so that warning is expected.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@pytest.fixture(autouse=True, scope="module")
def _stop_the_descriptor_server() -> Iterator[None]:
    """Leave no thread behind for the tests that follow (forking with threads warns).

    multiprocessing serves descriptors to pool workers from a thread in this process
    (``resource_sharer``) that it starts on first use and never stops by itself.
    """
    yield
    resource_sharer.stop(timeout=60)


START_METHODS = [
    pytest.param(
        method,
        marks=pytest.mark.skipif(
            method not in multiprocessing.get_all_start_methods(),
            reason=f"no {method} start method on this platform",
        ),
    )
    for method in ("fork", "spawn", "forkserver")
]

GREETING = b"parent wrote this"


def _context(
    method: str,
) -> (
    multiprocessing.context.ForkContext
    | multiprocessing.context.SpawnContext
    | multiprocessing.context.ForkServerContext
):
    ctx = multiprocessing.get_context(method)
    assert isinstance(
        ctx,
        multiprocessing.context.ForkContext
        | multiprocessing.context.SpawnContext
        | multiprocessing.context.ForkServerContext,
    )
    return ctx


def _memory(name: str, size: int = 4096) -> AnonymousMemory:
    mem = AnonymousMemory(size, name=name)
    with mem.map(length=len(GREETING)) as view:
        view[:] = GREETING
    return mem


def _assert_same_memory(seen: Seen, mem: AnonymousMemory) -> None:
    st = os.fstat(mem.fileno())
    assert seen.pid != os.getpid()
    assert (seen.name, seen.size, seen.protection) == (mem.name, mem.size, int(mem.protection))
    assert (seen.device, seen.inode) == (st.st_dev, st.st_ino)
    assert seen.head == (GREETING + bytes(16))[: min(16, mem.size)]


def _read(mem: AnonymousMemory, offset: int, length: int) -> bytes:
    with mem.map(offset, length) as view:
        return bytes(view.buf)


@pytest.mark.parametrize("method", START_METHODS)
def test_process_gets_the_same_memory(method: str) -> None:
    ctx = _context(method)
    with _memory(f"mp-process-{method}") as mem:
        receiver, sender = ctx.Pipe(duplex=False)
        with receiver:
            process = ctx.Process(target=touch_and_report, args=(sender, mem, b"worker wrote"))
            process.start()
            sender.close()
            seen = receiver.recv()
            process.join(60)
        assert process.exitcode == 0
        process.close()
        _assert_same_memory(seen, mem)
        assert not seen.writable_map_refused
        assert _read(mem, 0, 12) == b"worker wrote"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_apply_and_map_get_the_same_memory(method: str) -> None:
    ctx = _context(method)
    with _memory(f"mp-pool-{method}") as mem, ctx.Pool(2) as pool:
        applied = pool.apply(touch, (mem, b"applied", 100))
        mapped = pool.map(functools.partial(touch_slot, mem), range(32, 40))
        starmapped = pool.starmap(touch_slot, [(mem, slot) for slot in range(40, 44)])
        pool.close()
        pool.join()
        for seen in [applied, *mapped, *starmapped]:
            _assert_same_memory(seen, mem)
        assert _read(mem, 100, 7) == b"applied"
        assert _read(mem, 32, 12) == bytes(range(33, 45))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor_gets_the_same_memory(method: str) -> None:
    ctx = _context(method)
    with (
        _memory(f"mp-executor-{method}") as mem,
        concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor,
    ):
        submitted = executor.submit(touch, mem, b"submitted", 200).result(timeout=60)
        mapped = list(executor.map(touch_slot, [mem] * 4, range(50, 54), timeout=60))
        for seen in [submitted, *mapped]:
            _assert_same_memory(seen, mem)
        assert _read(mem, 200, 9) == b"submitted"
        assert _read(mem, 50, 4) == bytes(range(51, 55))


@pytest.mark.parametrize("how", ["frozen", "read-only duplicate"])
@pytest.mark.parametrize(
    ("kind", "method"), [("process", "spawn"), ("process", "fork"), ("pool", "fork")]
)
def test_read_only_memory_arrives_read_only(how: str, kind: str, method: str) -> None:
    with _memory(f"mp-readonly-{kind}-{method}") as mem:
        if how == "frozen":
            if not FEATURES.freeze:
                assert_freeze_refused(mem)
                return
            mem.freeze()
            handed = mem
        else:
            handed = mem.duplicate(protection=Protection.READ_ONLY)
        try:
            ctx = _context(method)
            if kind == "pool":
                with ctx.Pool(1) as pool:
                    seen = pool.apply(touch, (handed, b"must not land"))
                    pool.close()
                    pool.join()
            else:
                receiver, sender = ctx.Pipe(duplex=False)
                with receiver:
                    process = ctx.Process(
                        target=touch_and_report, args=(sender, handed, b"must not land")
                    )
                    process.start()
                    sender.close()
                    seen = receiver.recv()
                    process.join(60)
                assert process.exitcode == 0
                process.close()
            _assert_same_memory(seen, handed)
            assert seen.protection == Protection.READ_ONLY
            assert seen.writable_map_refused
            assert seen.frozen == (how == "frozen")
            assert _read(mem, 0, len(GREETING)) == GREETING
        finally:
            handed.close()


def test_closed_memory_is_refused_in_the_parent() -> None:
    mem = AnonymousMemory(16, name="mp-closed")
    mem.close()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        with pytest.raises(ValueError, match="closed"):
            pool.apply(touch, (mem, b"x"))
        pool.close()
        pool.join()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickle_of_a_memory_is_a_clear_type_error(protocol: int) -> None:
    with AnonymousMemory(16) as mem:
        with pytest.raises(TypeError, match=r"AnonymousMemory cannot be pickled.*multiprocessing"):
            pickle.dumps(mem, protocol=protocol)
        with mem.map() as view:
            with pytest.raises(TypeError, match="MemoryMap cannot be pickled"):
                pickle.dumps(view, protocol=protocol)


def test_copying_a_memory_is_refused() -> None:
    # A shallow copy would share the descriptor number: two owners, a double close.
    with AnonymousMemory(16) as mem, mem.map() as view:
        for clone in (copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match="cannot be pickled"):
                clone(mem)
            with pytest.raises(TypeError, match="cannot be pickled"):
                clone(view)


def test_multiprocessing_imported_after_anonshm_still_carries_the_memory() -> None:
    # anonshm defers its reducer until multiprocessing is imported: check both halves.
    code = """
        import sys
        import anonshm
        assert "multiprocessing" not in sys.modules, "import anonshm loaded multiprocessing"
        import multiprocessing
        from tests._mp_workers import touch
        with anonshm.AnonymousMemory(64, name="late") as mem:
            context = multiprocessing.get_context("spawn")
            worker = context.Process(target=touch, args=(mem, b"late"))
            worker.start()
            worker.join(60)
            assert worker.exitcode == 0, worker.exitcode
            with mem.map() as view:
                assert view[:4] == b"late", view[:4]
        print("ok")
    """
    assert run_child(code).stdout.strip() == "ok"


def test_anonshm_imported_afresh_leaves_one_hook_and_multiprocessing_imports() -> None:
    # A second copy of the module must replace the import hook, not ask it in a loop.
    code = """
        import importlib, sys
        import anonshm
        importlib.reload(anonshm)
        marked = [f for f in sys.meta_path if getattr(f, "anonshm_reducer_hook", False)]
        import multiprocessing.reduction
        from anonshm import AnonymousMemory
        registered = AnonymousMemory in multiprocessing.reduction.ForkingPickler._extra_reducers
        print(len(marked), registered)
    """
    assert run_child(code).stdout.split() == ["1", "True"]


def test_a_close_at_any_line_of_the_reducer_never_sends_another_memory() -> None:
    # A pool pickles its arguments in a thread of its own, so the submitter's close()
    # and a new memory (which may reuse the number) can land at any line of the
    # reducer.  Whatever the line, what arrives is the memory passed, or the clear
    # "closed before multiprocessing sent it" error: never the other memory.
    from multiprocessing.reduction import ForkingPickler

    from tests._faults import each_line

    state: dict[str, AnonymousMemory] = {}
    others: list[AnonymousMemory] = []
    payloads: list[bytes] = []

    def setup() -> Callable[[], object]:
        mem = state["mem"] = AnonymousMemory(4096, name="passed")
        with mem.map() as view:
            view[:6] = b"passed"
        return lambda: payloads.append(bytes(ForkingPickler.dumps(mem)))

    def handler() -> None:
        state["mem"].close()
        other = AnonymousMemory(4096, name="other")
        with other.map() as view:
            view[:5] = b"other"
        others.append(other)

    def check(outcome: type[BaseException] | None) -> None:
        assert outcome in (None, ValueError), outcome
        state["mem"].close()
        for payload in payloads:
            with pickle.loads(payload) as got, got.map(length=6) as view:
                assert (got.name, view[:6]) == ("passed", b"passed")
        payloads.clear()
        for other in others:
            other.close()
        others.clear()

    assert each_line(setup, handler, check) >= 3


def test_a_pool_task_gets_the_memory_passed_even_when_it_is_closed_right_after() -> None:
    # The same race, for real: apply_async, close at once, open another memory.  A
    # short switch interval lets the pool's thread run between any two bytecodes.
    wrong = refused = delivered = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        delivered, refused, wrong = _pool_race(5000)
    finally:
        sys.setswitchinterval(interval)
    assert wrong == 0
    assert delivered + refused == 5000  # every refusal was the clear one


def _pool_race(tries: int) -> tuple[int, int, int]:
    wrong = refused = delivered = 0
    with multiprocessing.get_context("fork").Pool(1) as pool:
        for index in range(tries):
            mem = AnonymousMemory(4096 + index % 7, name=f"passed{index}")
            result = pool.apply_async(touch, (mem, b""))
            for _ in range(index % 300):  # closes at every moment of the pool's pickling
                pass
            mem.close()
            other = AnonymousMemory(4096, name="other")
            try:
                seen = result.get(timeout=60)
            except ValueError as exc:
                refused += "was closed before multiprocessing sent it" in str(exc)
            else:
                delivered += 1
                wrong += seen.name != f"passed{index}"
            other.close()
    return delivered, refused, wrong
