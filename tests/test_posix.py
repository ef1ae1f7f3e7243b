"""The posix backend (macOS, the BSDs): a random shm_open name, a read-only twin, no seals.

With ``ANONSHM_BACKEND=posix`` the whole suite runs on it; these tests are about its own
system calls.  They call ``_posix`` directly, so the default Linux run checks them too:
each makes a real POSIX shared memory object (in /dev/shm on Linux), of which only the
names anonshm could have made are looked at (other programs use /dev/shm).
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]  # CPython's, as _posix uses it
import doctest
import errno
import fcntl
import mmap
import os
import secrets
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonShmError, AnonymousMemory, Protection, TokenError, _handoff, _posix
from anonshm import _memory as memory_module
from anonshm import _ps as ps_module
from anonshm._holder import close_all
from tests._faults import Interrupted, each_line, raise_interrupted, where
from tests.conftest import (
    FEATURES,
    PS_REFUSAL,
    SHM_PREFIX,
    child_env,
    file_id,
    maps_of,
    open_files,
    shm_names,
    shm_names_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

MACOS_NAME_MAX = 30  # bytes, with the leading '/': PSHMNAMLEN is 31


def _access(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


@pytest.fixture
def pending() -> Iterator[list[int]]:
    """The list a creation appends its descriptors to, closed afterwards."""
    fds: list[int] = []
    try:
        yield fds
    finally:
        close_all(fds)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """No umask: a mode wider than 0600 would show as it is."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_creation_gives_a_read_write_descriptor_and_its_read_only_twin(
    pending: list[int], umask_zero: None
) -> None:
    _posix.create(pending, "ignored", 5000, None, False)
    fd, twin = pending
    assert (_access(fd), _access(twin)) == (os.O_RDWR, os.O_RDONLY)
    assert file_id(fd) == file_id(twin)  # one object, two access modes
    assert not os.get_inheritable(fd)
    assert not os.get_inheritable(twin)
    st = os.fstat(fd)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_size, st.st_nlink) == (5000, 0)
    # The name it had, short enough for macOS, is unlinked before create() returns.
    link = os.readlink(f"/proc/self/fd/{fd}")
    path, deleted, _ = link.partition(" (deleted)")
    assert deleted
    name = "/" + os.path.basename(path)
    assert name.startswith("/" + SHM_PREFIX)
    assert len(name.encode()) <= MACOS_NAME_MAX
    assert os.path.basename(path) not in shm_names()


def _taken(monkeypatch: pytest.MonkeyPatch, *names: bytes) -> list[str]:
    """Make the next random names ``names`` (then the real ones); return them as paths."""
    queue = list(names)
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: queue.pop(0) if queue else real(n))
    return [_posix.NAME_PREFIX + raw.hex() for raw in names]


def test_a_name_in_use_is_never_opened_but_passed_over(
    pending: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # O_EXCL: without it the creation would open (and truncate) someone else's object.
    raw = secrets.token_bytes(10)
    [path] = _taken(monkeypatch, raw)
    other = _posixshmem.shm_open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(other, 123)
        os.pwrite(other, b"theirs", 0)
        _posix.create(pending, "ignored", 4096, None, False)
        assert file_id(pending[0]) != file_id(other)
        assert os.fstat(other).st_size == 123
        assert os.pread(other, 6, 0) == b"theirs"
        assert os.path.basename(path) in shm_names()  # still theirs, still named
    finally:
        _posixshmem.shm_unlink(path)
        os.close(other)


def test_when_every_name_tried_is_taken_creation_is_file_exists(
    pending: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = secrets.token_bytes(10)
    [path, *_] = _taken(monkeypatch, *[raw] * _posix._TRIES)
    other = _posixshmem.shm_open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(FileExistsError, match="no free name"):
            _posix.create(pending, "ignored", 4096, None, False)
        assert pending == []
        assert os.fstat(other).st_size == 0  # never truncated by the attempts
    finally:
        _posixshmem.shm_unlink(path)
        os.close(other)


def _living_name(directory: Path | None) -> str | None:
    """The name a creation in this process has made and not yet unlinked, if any."""
    if directory is not None:
        made = [entry.name for entry in directory.iterdir() if entry.name.startswith(".anonshm-")]
        return str(directory / made[0]) if made else None
    for entry in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
        if link.startswith(f"/dev/shm/{SHM_PREFIX}") and not link.endswith(" (deleted)"):
            return link
    return None


@pytest.mark.parametrize("place", ["shm", "directory"])
def test_a_name_replaced_between_the_two_opens_never_gives_a_foreign_twin(
    place: str, tmp_path: Path
) -> None:
    # Between the open that makes the object and the open of its read-only twin, a
    # process that may write the directory swaps another file in under the name.
    directory = tmp_path / "memories" if place == "directory" else None
    if directory is not None:
        directory.mkdir()
    pending: list[int] = []
    planted: list[str] = []
    outcomes: list[type[BaseException] | None] = []

    def replace() -> None:
        name = _living_name(directory)
        if name is None:
            return
        if directory is None:
            shm = name.removeprefix("/dev/shm")
            _posixshmem.shm_unlink(shm)
            os.close(_posixshmem.shm_open(shm, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        else:
            os.rename(name, name + ".moved")
            os.close(os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        planted.append(name)

    def setup() -> Callable[[], object]:
        return lambda: _posix.create(
            pending, "x", 4096, None if directory is None else str(directory), False
        )

    def check(outcome: type[BaseException] | None) -> None:
        outcomes.append(outcome)
        if outcome is None:
            fd, twin = pending
            assert file_id(fd) == file_id(twin), f"replaced at {where}: a foreign twin"
        else:
            assert outcome is FileExistsError
        close_all(pending)
        for name in planted:  # what creation did not unlink, the test does
            if directory is None:
                try:
                    _posixshmem.shm_unlink(name.removeprefix("/dev/shm"))
                except FileNotFoundError:
                    pass
        planted.clear()
        if directory is not None:
            for entry in directory.iterdir():
                entry.unlink()

    assert each_line(setup, replace, check) >= 3
    assert FileExistsError in outcomes  # the swap was caught at least once


@pytest.mark.parametrize("place", ["shm", "directory"])
def test_ctrl_c_at_any_line_of_creation_leaves_no_name(place: str, tmp_path: Path) -> None:
    # A name left in /dev/shm would last until reboot.
    directory = str(tmp_path) if place == "directory" else None
    pending: list[int] = []
    held: set[tuple[int, int]] = set()  # the files open when Ctrl-C came

    def interrupt() -> None:
        held.update(open_files())
        raise_interrupted()

    def check(outcome: type[BaseException] | None) -> None:
        assert outcome in (None, Interrupted)
        close_all(pending)
        assert shm_names_of(held) == set(), f"interrupted at {where}"
        assert list(tmp_path.iterdir()) == [], f"interrupted at {where}"

    def setup() -> Callable[[], object]:
        return lambda: _posix.create(pending, "x", 4096, directory, False)

    assert each_line(setup, interrupt, check) >= 3


def test_nothing_is_sealed_frozen_or_named(pending: list[int]) -> None:
    _posix.create(pending, "label", 4096, None, False)
    fd, twin = pending
    for got, access in ((_posix.inspect(fd), "rw"), (_posix.inspect(twin), "r")):
        assert (got.kind, got.named, got.size, got.access) == (None, False, 4096, access)
        assert (got.fixed_size, got.frozen, got.revocable) == (False, False, False)
    with pytest.raises(AnonShmError, match="cannot freeze"):
        _posix.freeze(fd)
    assert _posix.kernel_name(fd) is None
    assert (_posix.FEATURES.fixed_size, _posix.FEATURES.freeze, _posix.FEATURES.names) == (
        False,
        False,
        False,
    )


def test_a_read_only_descriptor_is_the_twin_else_the_descriptor_itself(
    pending: list[int],
) -> None:
    _posix.create(pending, "label", 4096, None, False)
    fd, twin = pending
    _posix.readonly(pending, fd, twin)
    assert (_access(pending[-1]), file_id(pending[-1])) == (os.O_RDONLY, file_id(fd))
    # Documented: without a twin nothing can make it read-only (no /proc on macOS).
    _posix.readonly(pending, fd, -1)
    assert _access(pending[-1]) == os.O_RDWR


def test_receive_refuses_its_memory_unless_resizable_memory_is_allowed(pending: list[int]) -> None:
    # Nothing fixes the size of a shared memory object: any holder can truncate it
    # under the receiver's maps, and its next touch is SIGBUS.
    _posix.create(pending, "label", 4096, None, False)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        for _ in range(2):
            _handoff.send_fd(left, pending[0], _handoff.message("shm", 4096, 1))
        with pytest.raises(TokenError, match="can be resized by its other holders"):
            AnonymousMemory.receive(right)
        with AnonymousMemory.receive(right, allow_resizable=True) as got:
            assert (got.name, got.size, got.fixed_size) == ("shm", 4096, False)
        # And what this backend's AnonymousMemory sends: refused by default there.
        with AnonymousMemory(64, name="made") as mem:
            mem.send(left)
            if FEATURES.fixed_size:
                AnonymousMemory.receive(right).close()
            else:
                with pytest.raises(TokenError, match=r"allow_resizable=True\) accepts it"):
                    AnonymousMemory.receive(right)


def test_a_map_starts_on_an_allocation_granularity_boundary(pending: list[int]) -> None:
    # Apple silicon has 16 KiB pages: the offset is rounded to the granularity, not 4096.
    granularity = mmap.ALLOCATIONGRANULARITY
    _posix.create(pending, "label", 3 * granularity, None, False)
    fd = pending[0]
    mapping, buf = _posix.map(fd, granularity + 5, 10, 1, populate=False, hugepages=False)
    try:
        [line] = maps_of(file_id(fd))
        start, end = (int(address, 16) for address in line.split()[0].split("-"))
        assert int(line.split()[2], 16) == granularity  # the file offset mapped from
        assert end - start >= granularity  # whole pages, from the boundary on
        assert len(buf) == 10
        buf[0] = 42
        assert os.pread(fd, 1, granularity + 5) == b"\x2a"
    finally:
        _posix.unmap(mapping, buf)
    assert maps_of(file_id(fd)) == []


def _perms(fd: int) -> list[str]:
    return [line.split()[1] for line in maps_of(file_id(fd))]


def test_where_only_shared_maps_exist_a_read_only_map_is_shared_and_write_copy_refused(
    pending: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # macOS maps a shared memory object MAP_SHARED or not at all; Linux and the BSDs
    # take NSPR's private read-only maps.  What macOS makes this backend do, on Linux:
    _posix.create(pending, "label", 4096, None, False)
    fd, twin = pending
    os.pwrite(fd, b"shared", 0)
    mapping, buf = _posix.map(twin, 0, 6, 0, populate=False, hugepages=False)
    try:
        assert (_perms(fd), bytes(buf), buf.readonly) == (["r--p"], b"shared", True)
    finally:
        _posix.unmap(mapping, buf)
    assert _posix._private_maps_refused(fd) is (sys.platform == "darwin")
    monkeypatch.setattr(_posix, "_private_maps_refused", lambda fd: True)
    for source in (fd, twin):
        mapping, buf = _posix.map(source, 0, 6, 0, populate=False, hugepages=False)
        try:
            assert (_perms(fd), bytes(buf), buf.readonly) == (["r--s"], b"shared", True)
        finally:
            _posix.unmap(mapping, buf)
        with pytest.raises(OSError, match="cannot map WRITE_COPY") as caught:
            _posix.map(source, 0, 6, 2, populate=False, hugepages=False)
        assert caught.value.errno == errno.EINVAL
    mapping, buf = _posix.map(fd, 0, 6, 1, populate=False, hugepages=False)
    try:
        assert (_perms(fd), buf.readonly) == (["rw-s"], False)
    finally:
        _posix.unmap(mapping, buf)


def test_a_read_write_duplicate_can_still_hand_out_read_only_descriptors() -> None:
    with AnonymousMemory(16) as mem, mem.duplicate() as copy:
        with copy.duplicate(protection=Protection.READ_ONLY) as reader:
            assert _access(reader.fileno()) == os.O_RDONLY
            assert file_id(reader.fileno()) == file_id(mem.fileno())


def test_anonshm_backend_posix_selects_it_and_an_unknown_one_names_the_choices() -> None:
    code = "from anonshm._backend import NAME, available; print(NAME, *available())"
    for wanted, expected in (("posix", "posix linux posix"), ("", "linux linux posix")):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(ANONSHM_BACKEND=wanted),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.split() == expected.split()
    done = subprocess.run(
        [sys.executable, "-c", "import anonshm"],
        env=child_env(ANONSHM_BACKEND="windows"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "ANONSHM_BACKEND='windows': anonshm on linux has the backends linux, posix" in (
        done.stderr
    )


# The examples in the docs that show what only the linux backend does.  The posix CI run
# deselects them from --doctest-modules; here, under posix, each must fail with the
# clear error, never quietly.
LINUX_ONLY_EXAMPLES = [
    pytest.param(
        memory_module, "AnonymousMemory.freeze", AnonShmError, "cannot freeze", id="freeze"
    ),
    pytest.param(memory_module, "AnonymousMemory.send", TokenError, "can be resized", id="send"),
    pytest.param(
        memory_module, "AnonymousMemory.receive", TokenError, "can be resized", id="receive"
    ),
    pytest.param(ps_module, "scan", AnonShmError, PS_REFUSAL, id="scan"),
]


class _Recorder(doctest.DocTestRunner):
    """Keeps what the examples raised instead of printing a report."""

    def __init__(self) -> None:
        super().__init__(optionflags=doctest.ELLIPSIS)
        self.raised: list[BaseException] = []

    def report_unexpected_exception(
        self,
        out: Callable[[str], object],
        test: doctest.DocTest,
        example: doctest.Example,
        exc_info: tuple[type[BaseException], BaseException, TracebackType],
    ) -> None:
        self.raised.append(exc_info[1])


@pytest.mark.parametrize(("module", "qualname", "error", "match"), LINUX_ONLY_EXAMPLES)
def test_the_docs_linux_only_examples_fail_clearly_elsewhere(
    module: object, qualname: str, error: type[Exception], match: str
) -> None:
    target: object = module
    for part in qualname.split("."):
        target = getattr(target, part)
    name = f"{module.__name__}.{qualname}"  # type: ignore[attr-defined]
    [test] = doctest.DocTestFinder().find(target, name, module=module, globs=vars(module).copy())  # type: ignore[arg-type]
    recorder = _Recorder()
    try:
        recorder.run(test, out=lambda _: None, clear_globs=False)
    finally:
        for value in test.globs.values():  # what a failed example may have left open
            if isinstance(value, (AnonymousMemory, socket.socket)):
                value.close()
        test.globs.clear()
    if FEATURES.name == "linux":
        assert (recorder.failures, recorder.raised) == (0, [])
        return
    assert recorder.raised, f"{name}'s example passed under {FEATURES.name}"
    first = recorder.raised[0]
    assert isinstance(first, error), repr(first)
    assert match in str(first)
