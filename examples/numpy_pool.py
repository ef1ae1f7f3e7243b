"""Share one numpy array between a parent and a pool of worker processes.

The parent makes an anonymous memory the size of the array and hands the memory
itself to every task: multiprocessing sends the descriptor, never the data.  Each
worker maps only its own rows, fills them in place and closes its handle; the parent
then finds every row already in its own array, without a copy.

Run (numpy is not a dependency of anonshm: ``pip install numpy`` first, or use the
``.venv`` that ``scripts/test`` makes):
    python examples/numpy_pool.py                      # the platform's start method
    python examples/numpy_pool.py --start-method spawn --workers 4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os

try:
    import numpy as np
except ImportError:  # say what to do, not a traceback
    raise SystemExit("this example needs numpy: pip install numpy") from None

from anonshm import AnonymousMemory

ROWS = 64
COLUMNS = 1000
DTYPE = np.dtype(np.float64)
ROW_BYTES = COLUMNS * DTYPE.itemsize


def expected_rows(first: int, last: int) -> np.ndarray[tuple[int, int], np.dtype[np.float64]]:
    """What rows ``first`` to ``last - 1`` must hold: row * 1000 + column."""
    rows = np.arange(first, last, dtype=DTYPE)[:, np.newaxis] * 1000
    return rows + np.arange(COLUMNS, dtype=DTYPE)


def fill(mem: AnonymousMemory, first: int, last: int) -> int:
    """Worker: fill rows ``first`` to ``last - 1`` of the shared table; return our pid."""
    # Map only this task's rows: the offset need not be page-aligned.
    with mem, mem.map(first * ROW_BYTES, (last - first) * ROW_BYTES) as view:
        rows = np.ndarray((last - first, COLUMNS), dtype=DTYPE, buffer=view.buf)
        rows[:] = expected_rows(first, last)
        del rows  # the map can unmap at once instead of when the array goes
    return os.getpid()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--start-method", choices=multiprocessing.get_all_start_methods(), default=None
    )
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    context = multiprocessing.get_context(args.start_method)

    chunk = -(-ROWS // (2 * args.workers))  # two tasks per worker
    tasks = [(first, min(first + chunk, ROWS)) for first in range(0, ROWS, chunk)]
    with AnonymousMemory(ROWS * ROW_BYTES, name="numpy-pool") as mem, mem.map() as view:
        table = np.ndarray((ROWS, COLUMNS), dtype=DTYPE, buffer=view.buf)
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            firsts, lasts = zip(*tasks, strict=True)
            pids = list(pool.map(fill, [mem] * len(tasks), firsts, lasts))
        ok = bool(np.array_equal(table, expected_rows(0, ROWS)))
        del table
    workers = len(set(pids))
    print(
        f"{workers} worker process{'es' if workers > 1 else ''} "
        f"({context.get_start_method()}) filled "
        f"{len(tasks)} slices of a {ROWS}x{COLUMNS} float64 array in shared memory"
    )
    for (first, last), pid in zip(tasks, pids, strict=True):
        print(f"  rows {first:>2}-{last - 1:<2} by pid {pid}")
    print("parent checked every value:", "ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
