"""anonshm benchmarks: every scenario, every contender side by side, in one run.

Usage::

    .venv/bin/python benchmarks/run.py               # full run: a few minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick       # well under a minute (CI keeps it working)
    .venv/bin/python benchmarks/run.py --json out.json --only lifecycle,spawn
    .venv/bin/python benchmarks/run.py --profile     # where anonshm's time goes, per call

Contenders are interleaved round by round and reported by their median, with the ratio
to anonshm (above 1: slower than anonshm).  The goals section is informational: the exit
status is 0 whether goals pass or miss.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import _child
import _handoffs
import _harness
import _scenarios
import _streaming
from _harness import GIB, KIB, MIB, Case, human, interleave, seconds

import anonshm

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SCENARIOS: Final = ("lifecycle", "handoff", "spawn", "touch", "streaming", "slots")
THP_SHMEM: Final = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


@dataclass(frozen=True)
class Plan:
    """How much of each scenario to run: sizes, rounds and batch counts."""

    lifecycle: tuple[tuple[int, int, int], ...]  # (size, calls per trial, rounds)
    handoff: tuple[tuple[int, int, int], ...]  # (size, rounds, warmup rounds)
    handoff_budget: float  # seconds per (mode, size) before rounds stop early
    spawn_calls: int
    spawn_rounds: int
    touch_size: int
    touch_rounds: int
    # (size, messages per throughput sample, messages per latency sample, rounds)
    streaming: tuple[tuple[int, int, int, int], ...]
    stream_budget: float  # seconds per size and measure before rounds stop early
    round_trip: tuple[int, int]  # (round trips per sample, rounds)
    slot_counts: tuple[int, ...]
    slot_sizes: tuple[tuple[int, int, int], ...]  # (size, messages per sample, rounds)


FULL: Final = Plan(
    lifecycle=((4 * KIB, 200, 25), (64 * MIB, 1, 15)),
    handoff=(
        (4 * KIB, 15, 1),
        (1 * MIB, 15, 1),
        (64 * MIB, 9, 1),
        (256 * MIB, 5, 1),
        (1 * GIB, 2, 0),  # two rounds of a gibibyte per contender is already ~30 s
    ),
    handoff_budget=60.0,
    spawn_calls=20,
    spawn_rounds=15,
    touch_size=256 * MIB,
    touch_rounds=7,
    streaming=(
        (64, 5000, 300, 7),
        (4 * KIB, 5000, 300, 7),
        (64 * KIB, 2000, 200, 7),
        (1 * MIB, 200, 50, 7),
        (16 * MIB, 16, 8, 5),
        (256 * MIB, 4, 2, 3),
    ),
    stream_budget=40.0,
    round_trip=(2000, 7),
    slot_counts=(4, 8, 16, 32, 64, 128, 256),
    slot_sizes=((64, 5000, 7), (4 * KIB, 5000, 7)),
)
QUICK: Final = Plan(
    lifecycle=((4 * KIB, 100, 15), (64 * MIB, 1, 5)),
    handoff=((4 * KIB, 5, 1), (1 * MIB, 3, 0), (16 * MIB, 5, 1)),
    handoff_budget=4.0,
    spawn_calls=10,
    spawn_rounds=5,
    touch_size=64 * MIB,
    touch_rounds=3,
    streaming=(
        (64, 500, 50, 3),
        (4 * KIB, 500, 50, 3),
        (64 * KIB, 100, 20, 3),
        (1 * MIB, 30, 10, 3),
        (16 * MIB, 3, 2, 3),
    ),
    stream_budget=1.5,
    round_trip=(200, 3),
    slot_counts=(8, 64),
    slot_sizes=((4 * KIB, 500, 3),),
)


def _title(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def print_case(case: Case, extra: tuple[str, ...] = ()) -> None:
    """One table: median, quartiles and the ratio to anonshm, per contender."""
    extras = "".join(f"{name:>11}" for name in extra)
    print(f"-- {case.case}")
    print(f"   {'contender':<31}{'median':>10}{'q1':>10}{'q3':>10}{extras}  vs anonshm")
    for name in case.samples:
        q1, q3 = case.spread(name)
        cells = "".join(f"{seconds(case.median(name, metric)):>11}" for metric in extra)
        ratio = case.ratio(name)
        mark = "  (baseline)" if name == case.baseline else ""
        print(
            f"   {name:<31}{seconds(case.median(name)):>10}{seconds(q1):>10}{seconds(q3):>10}"
            f"{cells}  {ratio:6.2f}x{mark}"
        )
    for note in case.notes:
        print(f"   note: {note}")
    sys.stdout.flush()


def run_lifecycle(plan: Plan) -> Iterator[Case]:
    _title("1. lifecycle: create, map, touch every page, close (time per lifecycle)")
    for size, calls, rounds in plan.lifecycle:
        case = Case("lifecycle", human(size), "anonshm")
        interleave(case, _scenarios.lifecycle_trials(size, calls), rounds=rounds, warmup=1)
        print_case(case)
        yield case


def _fits(size: int) -> bool:
    need = _handoffs.MEMORY_FACTOR * size + _handoffs.MEMORY_SLACK
    return size < 64 * MIB or _harness.available_memory() >= need


def run_handoff(plan: Plan, pin: bool) -> Iterator[Case]:
    modes = (
        ("fresh child per handoff", _handoffs.FRESH, "anonshm export+pass_fds"),
        ("long-lived worker", None, "anonshm send/receive"),
    )
    for mode, fresh, baseline in modes:
        _title(f"2. handoff, {mode}: data ready in the parent -> child has read it all")
        with ExitStack() as stack:
            placement = None
            if fresh is None and pin:
                placement = stack.enter_context(_handoffs.pinned_apart())
            if fresh is None:
                contenders = [(name, start(stack)) for name, start in _handoffs.LONG_LIVED]
            else:
                contenders = list(fresh)
            for size, rounds, warmup in plan.handoff:
                case = Case(f"handoff/{mode}", human(size), baseline)
                if not _fits(size):
                    case.notes.append(f"skipped: less than {_handoffs.MEMORY_FACTOR}x free memory")
                    print(f"-- {case.case}: skipped (not enough free memory)")
                    yield case
                    continue
                payload = _handoffs.Payload.make(size)
                # A handoff to a worker can take 50 µs: average a few per trial, so one
                # scheduler hiccup is diluted instead of becoming a sample of its own.
                count = 1 if fresh is not None else max(1, min(20, (1 * MIB) // size))
                trials = _handoffs.trials(contenders, payload, count)
                if count > 1:
                    case.notes.append(f"each sample is the mean of {count} handoffs")
                if placement is not None:
                    case.notes.append(placement)
                interleave(case, trials, rounds=rounds, warmup=warmup, budget=plan.handoff_budget)
                del payload, trials
                print_case(case)
                yield case


def run_spawn(plan: Plan) -> Iterator[Case]:
    _title(f"3. spawn overhead: {_scenarios.TRUE} with one memory passed, then wait()")
    with anonshm.AnonymousMemory(4 * KIB) as mem:
        case = Case("spawn", f"{_scenarios.TRUE}, 4 KiB memory", "anonshm spawn(inherit)")
        trials = _scenarios.spawn_trials(mem, plan.spawn_calls)
        interleave(case, trials, rounds=plan.spawn_rounds, warmup=1)
    print_case(case)
    yield case


def _shmem_setting() -> str:
    """The bracketed word of shmem_enabled ("never", "advise", ...), or "unknown"."""
    words = _harness.read_text(THP_SHMEM).split()
    return next((word.strip("[]") for word in words if word.startswith("[")), "unknown")


def _set_thp(value: str) -> str | None:
    """Write shmem_enabled; return the previous value (the bracketed word) or None."""
    previous = _shmem_setting()
    try:
        if previous == "unknown":
            raise OSError(f"cannot read {THP_SHMEM}")
        with open(THP_SHMEM, "w") as file:
            file.write(value)
    except OSError as exc:
        print(f"   --try-thp: cannot set {THP_SHMEM} to {value!r}: {exc}")
        return None
    return previous


@contextmanager
def _thp_advise(wanted: bool) -> Iterator[None]:
    """With --try-thp, as root: shmem_enabled is 'advise' for the run, then restored.

    Only memory mapped with MADV_HUGEPAGE (``map(hugepages=True)``) is affected: no
    other contender asks for it.
    """
    previous = None
    if wanted:
        if os.geteuid() != 0:
            print("   --try-thp: not root, leaving the setting alone")
        else:
            previous = _set_thp("advise")
            if previous is not None:
                print(f"   --try-thp: {THP_SHMEM} set to 'advise' for this run (was {previous!r})")
    try:
        yield
    finally:
        if previous is not None:
            _set_thp(previous)
            print(f"   --try-thp: restored {previous!r}")


def run_touch(plan: Plan) -> Iterator[Case]:
    size = plan.touch_size
    _title(f"4. first touch of {human(size)}: setup (create+map), then one write per page")
    case = Case("first touch", human(size), "map() lazy, then touch")
    case.notes.append(f"shmem_enabled: {_shmem_setting()}")
    probe = _scenarios.hugepage_probe(size)
    case.notes.append(
        f"map(hugepages=True): MADV_HUGEPAGE in VmFlags: {probe['advised']}, "
        f"bytes on huge pages: {probe['huge_bytes']}"
    )
    interleave(case, _scenarios.first_touch_trials(size), rounds=plan.touch_rounds, warmup=1)
    print_case(case, extra=("setup", "touch"))
    yield case


# What a size's workers hold at once: each one's reused buffer, the raw routes' read
# buffers, two channels and the floor (two slots each), memories in flight, copies.
STREAM_MEMORY_FACTOR: Final = 28


def run_streaming(plan: Plan, pin: bool) -> Iterator[Case]:
    _title("5. streaming to a long-lived worker: every message copied whole into a reused buffer")
    print(
        "   throughput: messages sent back to back; latency: one at a time, stamped at the\n"
        "   start of the send, timed once the worker has copied it all (p50/p99 per round,\n"
        "   medians over rounds); vs Pipe: throughput over mp.Pipe's (above 1: faster)"
    )
    with ExitStack() as stack:
        placement = stack.enter_context(_handoffs.pinned_apart()) if pin else None
        if placement is not None:
            print(f"   {placement}")
        pool = stack.enter_context(_streaming.Pool())
        yield from _stream_sizes(plan, pool)
        count, rounds = plan.round_trip
        case = Case("streaming/round trip", "64 B round trip", "two os.pipe pairs")
        case.notes.append(f"{count} round trips per round")
        workers = pool.ready(_streaming.round_trip_contenders(), 64)
        trials = [(w.name, _streaming.round_trip_trial(w, count)) for w in workers]
        interleave(case, trials, rounds=rounds, warmup=1, budget=plan.stream_budget)
    _streaming.print_latency(case, "two os.pipe pairs")
    yield case


def _stream_sizes(plan: Plan, pool: _streaming.Pool) -> Iterator[Case]:
    for size, count, timed, rounds in plan.streaming:
        label = human(size)
        cases = (
            Case("streaming/throughput", label, _streaming.PIPE),
            Case("streaming/latency", f"one-way latency, {label}", _streaming.PIPE),
        )
        if size >= 64 * MIB and _harness.available_memory() < STREAM_MEMORY_FACTOR * size:
            print(f"-- {label}: skipped (less than {STREAM_MEMORY_FACTOR}x free memory)")
            for case in cases:
                case.notes.append("skipped: not enough free memory")
            yield from cases
            continue
        data = _streaming.payload(size)
        throughput, latency = cases
        throughput.notes.append(
            f"{count} messages per sample; channel slots: {_streaming.slots_for(size)}"
        )
        workers = pool.ready(_streaming.contenders(size), size)
        trials = [(w.name, _streaming.throughput_trial(w, data, count)) for w in workers]
        interleave(throughput, trials, rounds=rounds, warmup=1, budget=plan.stream_budget)
        if size >= 16 * MIB:
            copy = _streaming.floor_copy(size, max(3, rounds))
            throughput.notes.append(
                f"one memcpy of {label} between two maps faulted in, in one process: "
                f"{seconds(copy)} ({size / copy / 1e9:.3g} GB/s)"
            )
        _streaming.print_throughput(throughput, size)
        trials = [(w.name, _streaming.latency_trial(w, data, timed)) for w in workers]
        latency.notes.append(f"{timed} messages per round")
        interleave(latency, trials, rounds=rounds, warmup=1, budget=plan.stream_budget)
        _streaming.print_latency(latency, _streaming.PIPE)
        del data
        yield from cases


def run_slots(plan: Plan, pin: bool) -> Iterator[Case]:
    _title("6. slots: channel throughput by the number of slots (as in 5)")
    contenders: list[tuple[str, Callable[[], _streaming.Route]]] = [
        (_streaming.PIPE, _streaming.PipeRoute)
    ]
    for slots in plan.slot_counts:
        for zero_copy, how in ((False, "write/read"), (True, "reserve/view")):
            route = functools.partial(_streaming.ChannelRoute, zero_copy, slots)
            contenders.append((f"slots={slots} {how}", route))
    with ExitStack() as stack:
        if pin:
            print(f"   {stack.enter_context(_handoffs.pinned_apart())}")
        pool = stack.enter_context(_streaming.Pool())
        for size, count, rounds in plan.slot_sizes:
            case = Case("slots", human(size), _streaming.PIPE)
            case.notes.append(f"{count} messages per sample")
            data = _streaming.payload(size)
            workers = pool.ready(contenders, size)
            trials = [(w.name, _streaming.throughput_trial(w, data, count)) for w in workers]
            interleave(case, trials, rounds=rounds, warmup=1, budget=plan.stream_budget)
            _streaming.print_slots(case, size, plan.slot_counts)
            yield case


@dataclass
class Goal:
    text: str
    value: float
    limit: float
    higher_is_better: bool
    measured: bool = True

    @property
    def verdict(self) -> str:
        if not self.measured or math.isnan(self.value):
            return "n/a"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "pass" if ok else "MISS"


def _find(cases: list[Case], scenario: str, case: str) -> Case | None:
    return next((c for c in cases if c.scenario == scenario and c.case == case), None)


def goals(cases: list[Case], shmem: str) -> list[Goal]:
    found: list[Goal] = []
    for mode, mine, raw in (
        ("fresh child per handoff", "anonshm export+pass_fds", "raw memfd+pass_fds"),
        ("long-lived worker", "anonshm send/receive", "raw memfd send_fds"),
    ):
        for case in cases:
            if case.scenario == f"handoff/{mode}" and case.samples:
                value = case.median(mine) / case.median(raw)
                text = f"handoff {mode}, {case.case}: anonshm / raw memfd <= 1.10"
                found.append(Goal(text, value, 1.10, higher_is_better=False))
    life = _find(cases, "lifecycle", "4 KiB")
    if life is not None:
        value = life.median("anonshm") / life.median("raw memfd+mmap")
        found.append(Goal("lifecycle 4 KiB: anonshm / raw memfd <= 1.5", value, 1.5, False))
        value = life.median("SharedMemory") / life.median("anonshm")
        found.append(Goal("lifecycle 4 KiB: SharedMemory / anonshm >= 2", value, 2.0, True))
    worker = _find(cases, "handoff/long-lived worker", "256 MiB")
    for mine, how in (
        ("anonshm send/receive", ""),
        ("anonshm send/receive, hugepages", f", hugepages=True (shmem_enabled: {shmem})"),
    ):
        text = f"handoff 256 MiB to a long-lived worker: pickle pipe / anonshm{how} >= 10"
        if worker is not None and worker.samples:
            value = worker.median("pickle through pipe") / worker.median(mine)
            found.append(Goal(text, value, 10.0, True))
        else:
            found.append(Goal(text + " (256 MiB not run)", float("nan"), 10.0, True, False))
    spawn_case = next((c for c in cases if c.scenario == "spawn"), None)
    if spawn_case is not None:
        value = spawn_case.median("anonshm spawn(inherit)") / spawn_case.median(
            "Popen(pass_fds, env=)"
        )
        found.append(Goal("spawn: anonshm / Popen(pass_fds, env=) <= 1.05", value, 1.05, False))
    found.extend(streaming_goals(cases))
    return found


def streaming_goals(cases: list[Case]) -> list[Goal]:
    found: list[Goal] = []
    pipe = _streaming.PIPE
    mine = ("channel write/read", "channel reserve/view")
    for size, limit in (("4 KiB", 3.0), ("16 MiB", 5.0)):
        case = _find(cases, "streaming/throughput", size)
        for name in mine:
            text = f"streaming {size}: {name} throughput / mp.Pipe's >= {limit:g}"
            if case is None or not case.samples:
                found.append(Goal(text + " (not run)", float("nan"), limit, True, False))
                continue
            found.append(Goal(text, case.median(pipe) / case.median(name), limit, True))
    trip = _find(cases, "streaming/round trip", "64 B round trip")
    if trip is not None and trip.samples:
        value = trip.median("two channels (write/read)") / trip.median("two os.pipe pairs")
        found.append(
            Goal("round trip 64 B: two channels / two os.pipe pairs <= 1.5", value, 1.5, False)
        )
    big = _find(cases, "streaming/throughput", "256 MiB")
    floor = "floor: mapped slots, raw pipes"
    for name in mine:
        texts = (
            f"streaming 256 MiB: pickle through os.pipe / {name} >= 10",
            f"streaming 256 MiB: {name} / the floor <= 1.2",
        )
        if big is None or not big.samples:
            found.extend(Goal(t + " (not run)", float("nan"), 0, True, False) for t in texts)
            continue
        found.append(
            Goal(texts[0], big.median("pickle through os.pipe") / big.median(name), 10.0, True)
        )
        found.append(Goal(texts[1], big.median(name) / big.median(floor), 1.2, False))
    return found


def print_goals(found: list[Goal]) -> None:
    _title("goals (medians from this run; informational, the exit status ignores them)")
    for goal in found:
        value = "-" if math.isnan(goal.value) else f"{goal.value:.2f}"
        print(f"   {goal.verdict:<5} {value:>7}  {goal.text}")


def _leftover_shm() -> set[str]:
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}
    except OSError:
        return set()


def _stop_resource_tracker() -> None:
    # SharedMemory started multiprocessing's tracker; stop and reap it rather than leave
    # it to notice our exit.  _stop is private (3.8+), hence the guard.
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if callable(stop):
        stop()


def _finite(value: object) -> object:
    """``value`` with NaN (a median of nothing) as null: NaN is not JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds (CI)")
    parser.add_argument("--json", metavar="PATH", help="also write every sample as JSON")
    parser.add_argument(
        "--only",
        metavar="LIST",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run, of {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--reader",
        choices=["crc32", "numpy"],
        default="crc32",
        help="how children read the bytes (crc32: no import cost; numpy: a uint64 sum)",
    )
    parser.add_argument(
        "--try-thp",
        action="store_true",
        help="as root, set shmem_enabled to 'advise' for the run (restored at the end)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run long-lived workers on other CPUs than this process (steadier small "
        "handoffs; slows the pipe routes' large handoffs)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile anonshm's hot paths instead"
    )
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    os.environ[_child.READER_VARIABLE] = args.reader  # children inherit the choice
    # Children get a bytecode cache of their own, as an installed package has: with
    # PYTHONDONTWRITEBYTECODE set (as in some CI images) every fresh child would compile
    # anonshm from source again, ~10 ms that no real deployment pays.  A private prefix
    # keeps the cache out of the source tree; it is removed at the end.
    pycache = tempfile.mkdtemp(prefix="anonshm-bench-pycache-")
    dont_write = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = pycache
    try:
        if args.profile:
            import _profile

            return _profile.main()
        return _run(args, only)
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
        if dont_write is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = dont_write


def _run_scenarios(plan: Plan, only: list[str], cases: list[Case], *, pin: bool) -> None:
    try:
        if "lifecycle" in only:
            cases.extend(run_lifecycle(plan))
        if "handoff" in only:
            cases.extend(run_handoff(plan, pin))
        if "spawn" in only:
            cases.extend(run_spawn(plan))
        if "touch" in only:
            cases.extend(run_touch(plan))
        if "streaming" in only:
            cases.extend(run_streaming(plan, pin))
        if "slots" in only:
            cases.extend(run_slots(plan, pin))
    finally:
        _stop_resource_tracker()


def _run(args: argparse.Namespace, only: list[str]) -> int:
    plan = QUICK if args.quick else FULL
    machine = _harness.machine(anonshm.__file__ or "?")
    print("anonshm benchmarks", "(quick)" if args.quick else "(full)")
    for key, value in machine.items():
        shown = human(value) if key.startswith("memory_") and isinstance(value, int) else value
        print(f"   {key:<18} {shown}")
    print(f"   {'reader':<18} {args.reader}")
    print(f"   {'child bytecode':<18} cached in a private PYTHONPYCACHEPREFIX")
    print("   ratio: contender median / anonshm median (above 1: slower than anonshm)")
    started = time.perf_counter()
    shm_before = _leftover_shm()
    cases: list[Case] = []
    with _thp_advise(args.try_thp):
        shmem = _shmem_setting()  # what the run had, before --try-thp restores it
        machine["shmem_enabled_during_run"] = shmem
        print(f"   {'shmem_enabled':<18} {shmem} ({THP_SHMEM})")
        _run_scenarios(plan, only, cases, pin=args.pin)
    found = goals(cases, shmem)
    print_goals(found)
    leftovers = sorted(_leftover_shm() - shm_before)
    if leftovers:
        print(f"\nwarning: left in /dev/shm: {', '.join(leftovers)}")
    elapsed = time.perf_counter() - started
    machine["loadavg_end"] = _harness.read_text("/proc/loadavg")
    print(f"\ndone in {elapsed:.1f} s (load average now {machine['loadavg_end']})")
    if args.json:
        report = {
            "mode": "quick" if args.quick else "full",
            "reader": args.reader,
            "elapsed_s": elapsed,
            "machine": machine,
            "cases": [case.to_json() for case in cases],
            "goals": [
                {"goal": g.text, "value": g.value, "limit": g.limit, "verdict": g.verdict}
                for g in found
            ],
            "leftover_dev_shm": leftovers,
        }
        with open(args.json, "w") as file:
            json.dump(_finite(report), file, indent=1, allow_nan=False)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
