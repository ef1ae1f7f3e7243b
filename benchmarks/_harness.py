"""Timing machinery shared by every scenario: interleaved rounds, medians, machine facts."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
PAGE: Final = os.sysconf("SC_PAGE_SIZE")

# One trial returns named durations in seconds; "time" is the one the table ranks.
Sample = dict[str, float]
Trial = Callable[[], Sample]


def human(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


@dataclass
class Case:
    """Every contender's samples for one scenario at one size, measured side by side."""

    scenario: str
    case: str
    baseline: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, contender: str, metric: str = "time") -> float:
        values = [s[metric] for s in self.samples.get(contender, []) if metric in s]
        return statistics.median(values) if values else float("nan")

    def spread(self, contender: str) -> tuple[float, float]:
        """The first and third quartile of the contender's times (how noisy it was)."""
        values = sorted(s["time"] for s in self.samples.get(contender, []))
        if len(values) < 4:
            return (values[0], values[-1]) if values else (float("nan"), float("nan"))
        q = statistics.quantiles(values, n=4)
        return q[0], q[2]

    def ratio(self, contender: str, metric: str = "time") -> float:
        """The contender's median over the baseline's (> 1: slower than anonshm)."""
        return self.median(contender, metric) / self.median(self.baseline, metric)

    def to_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "case": self.case,
            "baseline": self.baseline,
            "notes": self.notes,
            "contenders": {
                name: {
                    "median_s": self.median(name),
                    "ratio_to_baseline": self.ratio(name),
                    "quartiles_s": list(self.spread(name)),
                    "medians_s": {
                        metric: self.median(name, metric) for metric in samples[0] if samples
                    },
                    "samples": samples,
                }
                for name, samples in self.samples.items()
            },
        }


def interleave(
    case: Case,
    trials: Sequence[tuple[str, Trial]],
    *,
    rounds: int,
    warmup: int = 1,
    budget: float = float("inf"),
    min_rounds: int = 3,
) -> Case:
    """Run ``trials`` round-robin (A, B, C, A, B, C ...) and store their samples in ``case``.

    Interleaving spreads a noisy neighbour, thermal drift or a growing page cache over
    every contender alike, where all-A-then-all-B would charge it to whoever ran during
    it.  The order rotates each round so that no contender always runs right after the
    same other one.  After ``min_rounds``, rounds stop once ``budget`` seconds have passed.
    """
    for _ in range(warmup):
        for _, trial in trials:
            trial()
    start = time.perf_counter()
    for index in range(rounds):
        shift = index % len(trials)
        for name, trial in [*trials[shift:], *trials[:shift]]:
            # Collect between trials, never during one: a cycle collection triggered by
            # one contender's garbage would otherwise land in another's timing.
            gc.collect()
            gc.disable()
            try:
                sample = trial()
            finally:
                gc.enable()
            case.samples.setdefault(name, []).append(sample)
        if index + 1 >= min_rounds and time.perf_counter() - start > budget:
            case.notes.append(f"stopped after {index + 1} of {rounds} rounds (time budget)")
            break
    return case


def batch(operation: Callable[[], object], count: int) -> Trial:
    """A trial that runs ``operation`` ``count`` times and reports the time per call."""

    def trial() -> Sample:
        start = time.perf_counter()
        for _ in range(count):
            operation()
        return {"time": (time.perf_counter() - start) / count}

    return trial


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is no /proc)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    found[key] = int(parts[0]) * (KIB if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return found


def available_memory() -> int:
    return meminfo().get("MemAvailable", 0)


def read_text(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError as exc:
        return f"unavailable ({exc.strerror})"


def cpu_model() -> str:
    text = read_text("/proc/cpuinfo")
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or "unknown"


def machine(anonshm_file: str) -> dict[str, object]:
    """What the numbers depend on, recorded beside them."""
    info: dict[str, object] = {
        "cpu_model": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "anonshm_file": anonshm_file,
        "memory_total": meminfo().get("MemTotal", 0),
        "memory_available": available_memory(),
        "loadavg_start": read_text("/proc/loadavg"),
        "thp_enabled": read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_shmem_enabled": read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "page_size": PAGE,
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = None
    return info
