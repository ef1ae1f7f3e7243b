"""First fill of fresh memory: write() (pwrite) against map() and a copy.

Each trial makes a fresh memory, fills it whole from one bytes object, and closes it:
``write`` copies in the kernel, page by page, with no page table to build; a map
takes one page fault per page on its first touch (4 KiB each, unless huge pages).
Run alone: ``python benchmarks/_fill.py [rounds]``.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Final

from _harness import KIB, MIB, Case, human, interleave, seconds

from anonshm import AnonymousMemory

if TYPE_CHECKING:
    from _harness import Sample, Trial

SIZES: Final = (4 * KIB, 1 * MIB, 64 * MIB)
WRITE: Final = "create + write() + close"
MAP: Final = "create + map + copy + close"


def _calls(size: int) -> int:
    """Calls per sample: enough for the smallest sizes to outlast the clock's noise."""
    return max(1, (4 * MIB) // size)


def fill_trials(size: int) -> list[tuple[str, Trial]]:
    data = b"\x5a" * size
    calls = _calls(size)

    def by_write() -> Sample:
        start = time.perf_counter()
        for _ in range(calls):
            with AnonymousMemory(size, name="fill") as mem:
                mem.write(data)
        return {"time": (time.perf_counter() - start) / calls}

    def by_map() -> Sample:
        start = time.perf_counter()
        for _ in range(calls):
            with AnonymousMemory(size, name="fill") as mem, mem.map() as view:
                view.buf[:] = data
        return {"time": (time.perf_counter() - start) / calls}

    return [(WRITE, by_write), (MAP, by_map)]


def run_fill(rounds: int = 15, sizes: tuple[int, ...] = SIZES) -> list[Case]:
    """One case per size, both ways measured side by side (interleaved rounds)."""
    cases = []
    for size in sizes:
        case = Case("first fill", human(size), WRITE)
        interleave(case, fill_trials(size), rounds=rounds, warmup=1)
        cases.append(case)
    return cases


def print_table(cases: list[Case]) -> None:
    """Median time per fill each way, and how many times faster write() is."""
    print(f"{'size':>8}  {WRITE:>26}  {MAP:>28}  {'write() faster':>14}")
    for case in cases:
        by_write, by_map = case.median(WRITE), case.median(MAP)
        print(
            f"{case.case:>8}  {seconds(by_write):>26}  {seconds(by_map):>28}"
            f"  {by_map / by_write:>13.2f}x"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    print_table(run_fill(int(sys.argv[1]) if len(sys.argv) > 1 else 15))
