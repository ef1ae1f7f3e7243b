"""Soak: create, map, share with a child, close -- for a long time -- and watch for growth.

Every iteration makes a memory (memfd, or a backing file in a temporary directory),
maps and fills it, hands it to a long-lived worker child over a Unix socket (which maps
it, checks it and answers with a checksum), sometimes to a fresh child through
``spawn(inherit=...)`` or freezes it first, then closes everything.  At intervals it
prints this process's open descriptors, memfd mappings and RSS, and the worker's
descriptors.  It exits 1 if descriptors or mappings grew from the warmed-up baseline,
or RSS grew by more than ``--rss-slack`` MiB; 0 otherwise.

    python benchmarks/soak.py --seconds 600
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anonshm import AnonymousMemory, spawn  # noqa: E402
from anonshm._backend import backend  # noqa: E402

MIB = 1024 * 1024
_ANSWER = struct.Struct("!32sI")  # the checksum the worker saw, its open descriptor count

# Receives memories until EOF; answers each with a checksum and its descriptor count.
WORKER = """
    import hashlib, os, socket, struct, sys
    from anonshm import AnonymousMemory

    answer = struct.Struct("!32sI")
    with socket.socket(fileno=int(sys.argv[1])) as sock:
        while True:
            try:
                # Half the memories are directory-backed: not sealed, accepted on purpose.
                mem = AnonymousMemory.receive(sock, allow_resizable=True)
            except EOFError:
                break
            with mem, mem.map() as view:
                digest = hashlib.sha256(view.buf).digest()
            sock.sendall(answer.pack(digest, len(os.listdir("/proc/self/fd"))))
"""

# A fresh child that inherits one memory and prints its checksum.
CHILD = """
    import hashlib, sys
    from anonshm import AnonymousMemory

    with AnonymousMemory.inherited("soak") as mem, mem.map() as view:
        print(hashlib.sha256(view.buf).hexdigest())
"""


@dataclass
class Sample:
    """One look at this process (and the worker)."""

    iteration: int
    elapsed: float
    fds: int
    mappings: int
    rss_kib: int
    worker_fds: int


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mappings(backing: str) -> int:
    # memfd maps show as "/memfd:<name>"; backing files by their directory's path.
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if "/memfd:" in line or backing in line)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise RuntimeError("the worker hung up")
        data += chunk
    return data


def _iteration(
    i: int, sock: socket.socket, backing: str, spawn_every: int, env: dict[str, str]
) -> int:
    """One create/map/share/close cycle; returns the worker's descriptor count."""
    size = 4096 + (i * 7919) % (2 * MIB)
    directory = backing if i % 2 else None
    with AnonymousMemory(size, name="soak", directory=directory) as mem:
        with mem.map() as view:
            view[: min(size, 4096)] = os.urandom(min(size, 4096))
            view[size - 1] = i % 256
            digest = hashlib.sha256(view.buf).digest()
        if directory is None and i % 3 == 0 and backend.FEATURES.freeze:
            mem.freeze()
        mem.send(sock)
        seen, worker_fds = _ANSWER.unpack(_receive_exactly(sock, _ANSWER.size))
        if seen != digest:
            raise RuntimeError(f"iteration {i}: the worker saw other bytes")
        if spawn_every and i % spawn_every == 0:
            argv = [sys.executable, "-c", textwrap.dedent(CHILD)]
            with spawn(argv, inherit=[mem], env=env, stdout=subprocess.PIPE, text=True) as child:
                out, _ = child.communicate(timeout=60)
            if child.returncode != 0 or out is None or out.strip() != digest.hex():
                raise RuntimeError(f"iteration {i}: the spawned child failed or saw other bytes")
    return int(worker_fds)


def _print(sample: Sample) -> None:
    print(
        f"{sample.elapsed:8.1f}s  iter {sample.iteration:8d}  fds {sample.fds:4d}  "
        f"memfd maps {sample.mappings:3d}  rss {sample.rss_kib / 1024:8.1f} MiB  "
        f"worker fds {sample.worker_fds:4d}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run")
    parser.add_argument(
        "--iterations", type=int, default=0, help="stop after this many (0: no cap)"
    )
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds between lines")
    parser.add_argument(
        "--spawn-every", type=int, default=50, help="spawn a child every N (0: never)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="iterations before the baseline")
    parser.add_argument("--rss-slack", type=float, default=16.0, help="MiB of RSS growth allowed")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    print(
        f"soak: python {platform.python_version()}, Linux {platform.release()}, "
        f"{os.cpu_count()} CPUs, pid {os.getpid()}",
        flush=True,
    )
    left, right = socket.socketpair()
    with tempfile.TemporaryDirectory(prefix="anonshm-soak-") as backing, left:
        argv_worker = [sys.executable, "-c", textwrap.dedent(WORKER), str(right.fileno())]
        with subprocess.Popen(argv_worker, env=env, pass_fds=[right.fileno()]) as worker:
            right.close()
            start = time.monotonic()
            baseline: Sample | None = None
            last = sample = Sample(0, 0.0, _fds(), _mappings(backing), _rss_kib(), 0)
            _print(sample)
            i = 0
            try:
                while True:
                    i += 1
                    worker_fds = _iteration(i, left, backing, args.spawn_every, env)
                    elapsed = time.monotonic() - start
                    done = elapsed >= args.seconds or (args.iterations and i >= args.iterations)
                    warm = i == args.warmup
                    if warm or done or elapsed - last.elapsed >= args.report_every:
                        last = Sample(
                            i, elapsed, _fds(), _mappings(backing), _rss_kib(), worker_fds
                        )
                        _print(last)
                        if warm:
                            baseline = last
                    if done:
                        break
            finally:
                left.shutdown(socket.SHUT_WR)  # the worker's EOF
                worker.wait(timeout=60)
        if worker.returncode != 0:
            print(f"FAIL: the worker exited with {worker.returncode}")
            return 1
        leftovers = os.listdir(backing)
    if baseline is None:
        baseline = sample
        print(f"note: fewer than {args.warmup} iterations; the baseline is the start")
    failures = []
    if last.fds > baseline.fds:
        failures.append(f"descriptors grew from {baseline.fds} to {last.fds}")
    if last.mappings > baseline.mappings:
        failures.append(f"memfd mappings grew from {baseline.mappings} to {last.mappings}")
    if baseline.worker_fds and last.worker_fds > baseline.worker_fds:
        failures.append(
            f"the worker's descriptors grew from {baseline.worker_fds} to {last.worker_fds}"
        )
    if (last.rss_kib - baseline.rss_kib) / 1024 > args.rss_slack:
        failures.append(
            f"RSS grew from {baseline.rss_kib / 1024:.1f} to {last.rss_kib / 1024:.1f} MiB"
        )
    if leftovers:
        failures.append(f"left in the backing directory: {leftovers}")
    rate = last.iteration / last.elapsed if last.elapsed else 0.0
    print(
        f"soak: {last.iteration} iterations in {last.elapsed:.1f} s ({rate:.0f}/s); "
        f"fds {sample.fds} -> {baseline.fds} -> {last.fds}, "
        f"memfd maps {sample.mappings} -> {baseline.mappings} -> {last.mappings}, "
        f"rss {sample.rss_kib / 1024:.1f} -> {baseline.rss_kib / 1024:.1f} -> "
        f"{last.rss_kib / 1024:.1f} MiB, worker fds {baseline.worker_fds} -> {last.worker_fds}"
    )
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
