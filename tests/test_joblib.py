"""joblib and loky hand the memory itself to their workers, as multiprocessing does.

Four ways a task reaches a worker, each with a pickler of its own: ``joblib.Parallel`` on
the loky backend (joblib's default: its vendored loky, cloudpickle and loky's registry)
and on the multiprocessing backend (``joblib.pool``'s own pickler), and loky's executor,
standalone and vendored.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from multiprocessing import resource_sharer
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, Protection
from tests._joblib_workers import keep, touch_kept, write_slot
from tests._mp_workers import Seen, touch, touch_slot
from tests.conftest import FEATURES, assert_freeze_refused, file_id, open_fds, run_child

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

joblib = pytest.importorskip("joblib")
loky = pytest.importorskip("loky")

pytestmark = [
    # joblib's multiprocessing backend forks (before Python 3.14, on Linux) while loky's
    # threads run: Python >= 3.12 warns, and that start method is part of what is tested.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.skipif(sys.platform == "win32", reason="the Windows tests are in tests/windows"),
]

GREETING = b"parent wrote this"
WAYS = ["joblib-loky", "joblib-multiprocessing", "loky", "joblib.externals.loky"]


@pytest.fixture(autouse=True, scope="module")
def _stop_the_descriptor_server() -> Iterator[None]:
    """Leave no thread behind: tasks take descriptors from multiprocessing's sharer."""
    yield
    resource_sharer.stop(timeout=60)


def _executor(way: str, **options: object) -> object:
    # A fresh executor (reuse=False): joblib reuses the vendored loky's global executor
    # for Parallel, and one made here without joblib's reducers would break it.
    module = loky if way == "loky" else joblib.externals.loky
    return module.get_reusable_executor(max_workers=2, reuse=False, **options)


class _Runner:
    """Runs tasks one of the four ways, on one pool kept for the runner's life."""

    def __init__(self, way: str) -> None:
        self.way = way
        if way.startswith("joblib-"):
            # One call a batch: the calls of a batch share one memory in the worker, and
            # touch() closes it (see test_the_calls_of_a_batch_share_one_memory).
            backend = way.removeprefix("joblib-")
            self._parallel = joblib.Parallel(n_jobs=2, backend=backend, batch_size=1)
            self._parallel.__enter__()  # the pool lasts until close(), as an executor does
        else:
            self._pool = _executor(way)

    def run(self, func: Callable[..., Seen], calls: Sequence[tuple[object, ...]]) -> list[Seen]:
        if self.way.startswith("joblib-"):
            seen: list[Seen] = self._parallel(joblib.delayed(func)(*args) for args in calls)
            return seen
        futures = [self._pool.submit(func, *args) for args in calls]  # type: ignore[attr-defined]
        return [future.result(timeout=60) for future in futures]

    def close(self) -> None:
        if self.way.startswith("joblib-"):
            self._parallel.__exit__(None, None, None)
        else:
            self._pool.shutdown(wait=True)  # type: ignore[attr-defined]


@pytest.fixture(params=WAYS)
def runner(request: pytest.FixtureRequest) -> Iterator[_Runner]:
    runner = _Runner(request.param)
    try:
        yield runner
    finally:
        runner.close()


def _memory(name: str, size: int = 4096) -> AnonymousMemory:
    mem = AnonymousMemory(size, name=name)
    with mem.map(length=len(GREETING)) as view:
        view[:] = GREETING
    return mem


def _read(mem: AnonymousMemory, offset: int, length: int) -> bytes:
    with mem.map(offset, length) as view:
        return bytes(view.buf)


def _assert_same_memory(seen: Seen, mem: AnonymousMemory) -> None:
    assert seen.pid != os.getpid()
    assert (seen.name, seen.size, seen.protection) == (mem.name, mem.size, int(mem.protection))
    assert (seen.device, seen.inode) == file_id(mem.fileno())
    assert seen.head == GREETING[:16]


def test_a_task_gets_the_same_memory_and_its_writes_reach_the_parent(runner: _Runner) -> None:
    with _memory(f"joblib-{runner.way}") as mem:
        (written,) = runner.run(touch, [(mem, b"worker wrote", 100)])
        slots = runner.run(touch_slot, [(mem, slot) for slot in range(32, 40)])
        for seen in [written, *slots]:
            _assert_same_memory(seen, mem)
            assert not seen.writable_map_refused
        assert _read(mem, 100, 12) == b"worker wrote"
        assert _read(mem, 32, 8) == bytes(range(33, 41))


@pytest.mark.parametrize("how", ["frozen", "read-only duplicate"])
def test_read_only_memory_arrives_read_only(runner: _Runner, how: str) -> None:
    with _memory(f"joblib-readonly-{runner.way}") as mem:
        if how == "frozen":
            if not FEATURES.freeze:
                assert_freeze_refused(mem)
                return
            mem.freeze()
            handed = mem
        else:
            handed = mem.duplicate(protection=Protection.READ_ONLY)
        with handed:
            (seen,) = runner.run(touch, [(handed, b"must not land")])
            _assert_same_memory(seen, handed)
            assert seen.protection == Protection.READ_ONLY
            assert seen.writable_map_refused
            assert seen.frozen == (how == "frozen")
            assert _read(mem, 0, len(GREETING)) == GREETING


def test_a_closed_memory_is_the_clear_error(runner: _Runner) -> None:
    mem = AnonymousMemory(16, name="joblib-closed")
    mem.close()
    with pytest.raises((ValueError, pickle.PicklingError)) as caught:
        runner.run(touch, [(mem, b"x")])
    # loky raises PicklingError("Could not pickle the task ..."), the reducer's error
    # (from its queue's thread) as the cause; joblib's pool raises that error itself.
    said = f"{caught.value}\n{caught.value.__cause__}"
    assert "'joblib-closed'" in said
    assert "was closed before multiprocessing sent it" in said
    with _memory("joblib-after-closed") as other:  # the pool still works
        (after,) = runner.run(touch, [(other, b"")])
    assert after.name == "joblib-after-closed"


def test_a_reused_pool_leaks_no_descriptor_over_fifty_tasks(runner: _Runner) -> None:
    def tasks(count: int, prefix: str) -> list[tuple[int, int]]:
        memories = [_memory(f"{prefix}{index}") for index in range(count)]
        try:
            seen = runner.run(touch, [(mem, b"") for mem in memories])
            for got, mem in zip(seen, memories, strict=True):
                _assert_same_memory(got, mem)
            return [file_id(mem.fileno()) for mem in memories]
        finally:
            for mem in memories:
                mem.close()

    tasks(4, "warm")  # the pool's workers, queues and threads, the descriptor sharer
    # The sharer sends a duplicate and closes it in its own thread: stopped (joined, its
    # unclaimed duplicates closed), it leaves nothing in flight to be counted.
    resource_sharer.stop(timeout=60)
    before = open_fds()
    passed = set(tasks(50, "task"))
    resource_sharer.stop(timeout=60)
    after = open_fds()
    assert after - before == set(), "descriptors left open in the parent"
    assert not {file_id(fd) for fd in after} & passed, "a memory passed is still open"


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_the_calls_of_a_batch_share_one_memory(backend: str) -> None:
    # joblib pickles a batch of calls at once, so the memory passed to each arrives as
    # one object: a worker that closed it would fail the next call of its batch.
    with _memory(f"joblib-batch-{backend}") as mem:
        run = joblib.Parallel(n_jobs=2, backend=backend, batch_size=4)
        seen = run(joblib.delayed(write_slot)(mem, slot) for slot in range(8))
        assert _read(mem, 0, 8) == bytes(range(1, 9))
    # (pid, id) in the worker: joblib sizes the batches itself (at most 4 here, fewer
    # to keep both workers busy), but not every call can have had a batch of its own.
    assert len(set(seen)) < len(seen), seen


@pytest.mark.parametrize("way", ["loky", "joblib.externals.loky"])
def test_a_worker_started_with_a_memory_in_its_initargs_gets_it(way: str) -> None:
    # Pickled while the worker starts (loky's Popen passes the descriptor), not as a task.
    with _memory(f"joblib-initargs-{way}") as mem:
        executor = _executor(way, initializer=keep, initargs=(mem,))
        try:
            seen = executor.submit(touch_kept, b"initargs").result(timeout=60)  # type: ignore[attr-defined]
        finally:
            executor.shutdown(wait=True)  # type: ignore[attr-defined]
        _assert_same_memory(seen, mem)
        assert _read(mem, 0, 8) == b"initargs"


def test_joblib_pool_pickler_keeps_the_callers_reducers_first() -> None:
    pool = pytest.importorskip("joblib.pool")

    def mine(mem: AnonymousMemory) -> tuple[Callable[[str], str], tuple[str]]:
        return str, (f"mine: {mem.name}",)

    with AnonymousMemory(16, name="own-reducer") as mem:
        buffer = io.BytesIO()
        pool.CustomizablePickler(buffer, {AnonymousMemory: mine}).dump(mem)
        assert pickle.loads(buffer.getvalue()) == "mine: own-reducer"
        with pytest.raises(TypeError, match="AnonymousMemory cannot be pickled"):
            pickle.dumps(mem)  # plain pickle still refuses


def test_loky_and_joblib_imported_before_anonshm_learn_too() -> None:
    code = """
        import joblib, joblib.pool, loky
        import anonshm
        from tests._mp_workers import touch
        with anonshm.AnonymousMemory(64, name="late") as mem:
            with loky.get_reusable_executor(max_workers=1) as executor:
                print(executor.submit(touch, mem, b"loky").result(timeout=60).name)
            for backend in ("loky", "multiprocessing"):
                run = joblib.Parallel(n_jobs=2, backend=backend)
                print(run(joblib.delayed(touch)(mem, b"joblib") for _ in range(2))[0].name)
            with mem.map(length=6) as view:
                print(bytes(view).decode())
    """
    assert run_child(code).stdout.split() == ["late", "late", "late", "joblib"]


def test_anonshm_imports_neither_loky_nor_joblib() -> None:
    code = """
        import sys
        import anonshm, multiprocessing.reduction
        print(sorted(m for m in sys.modules if m.split(".")[0] in {"loky", "joblib"}
                     or m == "anonshm._loky"))
    """
    assert run_child(code).stdout.strip() == "[]"


def test_a_channel_end_reaches_the_worker(runner: _Runner) -> None:
    from anonshm import channel
    from tests._mp_workers import channel_write_numbers

    reader, writer = channel(16, slots=32, name="to-joblib")
    with reader, writer:
        # The task returns once all 20 are written (32 slots: it never waits on us).
        assert runner.run(channel_write_numbers, [(writer, 20)]) == [20]  # type: ignore[arg-type,comparison-overlap]
        writer.close()  # the worker's copy is closed: the stream ends after the 20
        assert [int(message) for message in reader] == list(range(20))
