"""Fill one shared table from joblib workers: each task gets the memory itself.

The parent makes an anonymous memory holding a table of 64-bit integers and passes the
memory to every ``joblib.Parallel`` call: joblib's pickler (loky's, or its pool's on the
multiprocessing backend) sends the descriptor, never the data.  Each worker maps only
its own slice, fills it in place and closes its handle; the parent then finds every
value already in its own view.  Pure Python: no numpy needed.

Run (joblib is not a dependency of anonshm: ``pip install joblib`` first, or use the
``.venv`` that ``scripts/test`` makes):
    python examples/joblib_pool.py                          # loky, joblib's default
    python examples/joblib_pool.py --backend multiprocessing --workers 4
"""

from __future__ import annotations

import argparse
import os

try:
    from joblib import Parallel, delayed
except ImportError:  # say what to do, not a traceback
    raise SystemExit("this example needs joblib: pip install joblib") from None

from anonshm import AnonymousMemory

VALUES = 4096
ITEM = 8  # bytes of one int64


def fill(mem: AnonymousMemory, first: int, last: int) -> int:
    """Worker: store ``i * i`` at every index ``first`` to ``last - 1``; return our pid."""
    # Map only this task's slice: the offset need not be page-aligned.
    with mem, mem.map(first * ITEM, (last - first) * ITEM) as view:
        values = view.buf.cast("q")
        for index in range(first, last):
            values[index - first] = index * index
        values.release()  # the map can unmap at once instead of when the view goes
    return os.getpid()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["loky", "multiprocessing"], default="loky")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    chunk = -(-VALUES // (4 * args.workers))  # four tasks per worker
    tasks = [(first, min(first + chunk, VALUES)) for first in range(0, VALUES, chunk)]
    with AnonymousMemory(VALUES * ITEM, name="joblib-pool") as mem:
        # One call a batch: joblib pickles the calls of a batch together, so they would
        # share one memory object in the worker, and fill() closes the one it gets.
        run = Parallel(n_jobs=args.workers, backend=args.backend, batch_size=1)
        pids = run(delayed(fill)(mem, first, last) for first, last in tasks)
        with mem.map() as view:
            values = view.buf.cast("q")
            ok = all(values[index] == index * index for index in range(VALUES))
            values.release()
    workers = len(set(pids))
    print(
        f"{workers} worker process{'es' if workers > 1 else ''} ({args.backend}) filled "
        f"{len(tasks)} slices of a table of {VALUES} int64 in shared memory"
    )
    for (first, last), pid in zip(tasks, pids, strict=True):
        print(f"  values {first:>4}-{last - 1:<4} by pid {pid}")
    print("parent checked every value:", "ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
