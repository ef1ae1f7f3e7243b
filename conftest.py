"""Collection: each platform runs the tests and doctests that apply to it.

On Windows (tested under Wine), the modules below test what only POSIX has; each is left
out with its reason, which the run's header lists.  Windows' own behaviour is tested in
``tests/windows`` (its public API, tokens, handles, children, multiprocessing).
"""

import sys

collect_ignore = []
if sys.platform != "win32":
    collect_ignore += ["anonshm/_windows.py", "anonshm/_winsection.py", "anonshm/_win32.py"]
else:
    collect_ignore += ["anonshm/_unix.py", "anonshm/_posix.py", "anonshm/_handoff.py"]
    # Channels and asyncio handoffs need sockets that carry descriptors.
    collect_ignore += ["anonshm/_aio.py", "anonshm/_end.py", "anonshm/_reader.py"]
    collect_ignore += ["anonshm/_stream.py", "anonshm/_writer.py"]
if sys.platform != "linux":
    collect_ignore += ["anonshm/_linux.py", "anonshm/_ps.py", "anonshm/_limits.py"]

POSIX_ONLY = {
    "tests/test_aio.py": "Unix sockets (SCM_RIGHTS), uvloop",
    "tests/test_aio_channel.py": "channels (Unix sockets), uvloop",
    "tests/test_channel.py": "channels (Unix sockets); tests/windows asserts the refusal",
    "tests/test_channel_attacks.py": "channels (Unix sockets); tests/windows asserts the refusal",
    "tests/test_concurrency.py": "children inheriting through pass_fds, counted in /proc",
    "tests/test_crash.py": "SIGKILL trials, holders found in /proc",
    "tests/test_for_child.py": "the POSIX options (pass_fds); tests/windows has Windows'",
    "tests/test_freeze.py": "memfd seals",
    "tests/test_handoff.py": "Unix sockets (SCM_RIGHTS)",
    "tests/test_handoff_checks.py": "Unix sockets and memfd seals",
    "tests/test_handoff_stream.py": "Unix sockets",
    "tests/test_holder.py": "descriptor tables in /proc, fork",
    "tests/test_hostile.py": "descriptor numbers and /proc",
    "tests/test_import.py": "the modules a POSIX child loads",
    "tests/test_interrupts.py": "SIGALRM",
    "tests/test_map.py": "mmap flags and /proc/self/maps",
    "tests/test_memory.py": "memfd, O_TMPFILE and /proc",
    "tests/test_multiprocessing.py": "the fork and forkserver start methods, /proc",
    "tests/test_nspr.py": "NSPR peers built with gcc",
    "tests/test_numpy.py": "numpy, not installed for Windows here",
    "tests/test_posix.py": "the posix backend",
    "tests/test_ps.py": "Linux's /proc",
    "tests/test_read_write.py": "numpy and /proc; tests/windows has Windows'",
    "tests/test_reserve.py": "posix_fallocate, cgroups and tmpfs",
    "tests/test_seals.py": "memfd seals",
    "tests/test_soak.py": "Unix sockets",
    "tests/test_spawn.py": "pass_fds, /proc and POSIX signals",
}
if sys.platform == "win32":
    collect_ignore += list(POSIX_ONLY)


def pytest_report_header() -> list[str]:
    """Say which test modules this platform leaves out, and why."""
    if sys.platform != "win32":
        return []
    return ["left out on Windows (POSIX only):"] + [
        f"  {path}: {why}" for path, why in POSIX_ONLY.items()
    ]
