"""AnonymousMemory: creation, validation, backends, lifecycle, leaks."""

from __future__ import annotations

import enum
import errno
import gc
import inspect
import os
import stat
from pathlib import Path

import pytest

from anonshm import AnonShmError, AnonymousMemory, Protection, TokenError, _linux
from tests.conftest import (
    FEATURES,
    IN_DEV_SHM,
    MEMORY_LINK,
    REOPENS_READ_ONLY,
    assert_freeze_refused,
    file_id,
    is_closed,
    mapping_lines,
    maps_of,
    open_fds,
    shm_names_of,
)


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 10 * 1024 * 1024 + 3], ids=str)
def test_size_is_exact_and_fresh_memory_reads_zero(size: int) -> None:
    with AnonymousMemory(size) as mem, mem.map() as view:
        assert mem.size == size == len(view) == os.fstat(mem.fileno()).st_size
        assert view.buf.tobytes() == bytes(size)


@pytest.mark.parametrize("size", [1.0, "1", None, True, b"1"], ids=repr)
def test_size_of_another_type_is_a_type_error(size: object) -> None:
    with pytest.raises(TypeError, match="size must be an int"):
        AnonymousMemory(size)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -1, -(2**70)], ids=str)
def test_size_below_one_is_a_value_error(size: int) -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        AnonymousMemory(size)


def test_size_beyond_a_file_offset_is_a_value_error(no_leaks: None) -> None:
    with pytest.raises(ValueError, match="more than a file offset"):
        AnonymousMemory(2**63)


def test_huge_sparse_memory_is_created_but_mapping_it_is_an_os_error(no_leaks: None) -> None:
    with AnonymousMemory(2**63 - 1) as mem:
        with pytest.raises(OSError):  # ENOMEM: no address space that large
            mem.map()


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", ValueError),
        ("a:b", ValueError),
        ("nul\0", ValueError),
        ("x" * 250, ValueError),
        ("é" * 125, ValueError),  # 250 bytes in UTF-8
        ("\udc80", ValueError),  # a lone surrogate cannot be encoded
        (b"bytes", TypeError),
        (None, TypeError),
    ],
    ids=["empty", "colon", "nul", "250-ascii", "250-utf8", "surrogate", "bytes", "none"],
)
def test_bad_names_are_refused(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="name"):
        AnonymousMemory(1, name=name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["x", "frame buffer", "日本語", "y" * 249, "é" * 124])
def test_valid_names_show_in_proc(name: str) -> None:
    with AnonymousMemory(1, name=name) as mem:
        assert mem.name == name
        link = os.readlink(f"/proc/self/fd/{mem.fileno()}")
        if FEATURES.names:
            assert link == f"/memfd:{name} (deleted)"
        else:  # the kernel keeps no name: the handle alone knows it
            assert link.startswith(MEMORY_LINK)
            assert link.endswith(" (deleted)")
            assert name not in link


def test_memfd_has_no_path_and_is_sealed_close_on_exec() -> None:
    with AnonymousMemory(4096) as mem:
        st = os.fstat(mem.fileno())
        assert stat.S_ISREG(st.st_mode)
        assert st.st_nlink == 0
        assert not os.get_inheritable(mem.fileno())
        assert not mem.frozen
        assert mem.fixed_size is FEATURES.fixed_size
        if FEATURES.fixed_size:
            seals = _linux.seals(mem.fileno())
            assert seals & _linux.FIXED_SIZE_SEALS == _linux.FIXED_SIZE_SEALS


def test_memfd_is_not_bound_by_dev_shm() -> None:
    shm = os.statvfs("/dev/shm")
    beyond = shm.f_blocks * shm.f_frsize + 4096
    # Creation reserves nothing, so a size beyond /dev/shm costs no memory here.
    with AnonymousMemory(beyond) as mem:
        assert mem.size == beyond
    if IN_DEV_SHM:  # the posix backend's objects are there: all their pages cannot be
        with pytest.raises(OSError, match="filesystem of /dev/shm") as caught:
            AnonymousMemory(beyond, reserve=True)
        assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, "/dev/shm")


@pytest.mark.parametrize("protection", list(Protection), ids=lambda p: p.name)
def test_protection_sets_the_descriptor_access_mode(protection: Protection) -> None:
    import fcntl

    with AnonymousMemory(8, protection=protection) as mem:
        assert mem.protection is protection
        access = fcntl.fcntl(mem.fileno(), fcntl.F_GETFL) & os.O_ACCMODE
        expected = os.O_RDWR if protection is Protection.READ_WRITE else os.O_RDONLY
        assert access == expected


@pytest.mark.parametrize("protection", [3, -1, "1", 1.0, None], ids=repr)
def test_bad_protection_is_refused(protection: object) -> None:
    with pytest.raises((TypeError, ValueError), match="protection"):
        AnonymousMemory(1, protection=protection)  # type: ignore[arg-type]


def test_protections_of_other_int_kinds_are_taken_by_value_and_named_when_refused() -> None:
    class Other(enum.IntEnum):
        ONE = 1
        FIVE = 5

    with AnonymousMemory(8, protection=Other.ONE) as mem:  # type: ignore[arg-type]
        assert mem.protection is Protection.READ_WRITE
        with mem.map(protection=2) as view:  # type: ignore[arg-type]
            assert view.protection is Protection.WRITE_COPY
    with pytest.raises(ValueError, match=r"not <Other\.FIVE: 5>"):
        AnonymousMemory(8, protection=Other.FIVE)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a Protection, not bool"):
        AnonymousMemory(8, protection=True)  # type: ignore[arg-type]


def test_signature_shows_the_default_protection_by_name() -> None:
    default = inspect.signature(AnonymousMemory).parameters["protection"].default
    assert repr(default) == "Protection.READ_WRITE"
    assert default == Protection.READ_WRITE


def test_repr_names_the_state() -> None:
    mem = AnonymousMemory(16, name="r")
    assert repr(mem) == f"<AnonymousMemory 'r' size=16 protection=READ_WRITE fd={mem.fileno()}>"
    mem.close()
    assert repr(mem) == "<AnonymousMemory 'r' size=16 protection=READ_WRITE closed>"


def test_close_is_idempotent_and_use_after_close_is_a_value_error() -> None:
    mem = AnonymousMemory(16)
    fd = mem.fileno()
    mem.close()
    mem.close()
    assert mem.closed
    assert is_closed(fd)
    for use in (mem.fileno, mem.map, mem.export, mem.duplicate, mem.freeze):
        with pytest.raises(ValueError, match="closed"):
            use()
    with pytest.raises(ValueError, match="closed"):
        _ = mem.frozen
    with pytest.raises(ValueError, match="closed"), mem:
        pass


def test_with_block_closes_the_descriptor_and_every_map() -> None:
    with AnonymousMemory(8192) as mem:
        fd = mem.fileno()
        views = [mem.map(), mem.map(100, 50), mem.map(4096, protection=Protection.READ_ONLY)]
    assert mem.closed
    assert is_closed(fd)
    assert all(view.closed for view in views)
    with pytest.raises(ValueError, match="closed"):
        _ = views[0].buf


def test_closing_the_memory_leaves_maps_closed_by_the_user_alone() -> None:
    with AnonymousMemory(10) as mem:
        view = mem.map()
        view.close()
    assert view.closed


def test_maps_are_not_kept_alive_by_the_memory() -> None:
    with AnonymousMemory(10) as mem:
        with mem.map() as view:
            view[0] = 1
        identity = file_id(mem.fileno())
        del view
        gc.collect()
        assert not maps_of(identity)


def test_unclosed_memory_warns_and_its_descriptor_is_closed() -> None:
    mem = AnonymousMemory(16, name="forgotten")
    fd = mem.fileno()
    with pytest.warns(ResourceWarning, match="forgotten"):
        del mem
        gc.collect()
    assert is_closed(fd)


def test_unclosed_map_warns_and_is_unmapped() -> None:
    with AnonymousMemory(16, name="lost-map") as mem:
        view = mem.map()
        assert maps_of(file_id(mem.fileno()))
        with pytest.warns(ResourceWarning, match="lost-map"):
            del view
            gc.collect()
        assert not maps_of(file_id(mem.fileno()))


def test_memory_cannot_be_pickled_or_copied() -> None:
    import copy
    import pickle

    with AnonymousMemory(16) as mem:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(mem)
        with pytest.raises(TypeError, match="cannot be pickled"):
            copy.copy(mem)


def test_directory_backend_leaves_no_name(tmp_path: Path) -> None:
    with AnonymousMemory(5000, directory=tmp_path, name="d") as mem, mem.map() as view:
        view[:4] = b"data"
        st = os.fstat(mem.fileno())
        assert stat.S_ISREG(st.st_mode)
        assert st.st_nlink == 0
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0
        assert st.st_dev == os.stat(tmp_path).st_dev
        assert not os.get_inheritable(mem.fileno())
        assert mem.size == 5000
        assert mem.name == "d"
        assert not mem.frozen
        assert list(tmp_path.iterdir()) == []
    assert list(tmp_path.iterdir()) == []


def test_directory_backend_cannot_be_linked_back(tmp_path: Path) -> None:
    # O_TMPFILE | O_EXCL: not even the holder can give the file a name.
    with AnonymousMemory(10, directory=tmp_path) as mem, pytest.raises(OSError):
        os.link(f"/proc/self/fd/{mem.fileno()}", tmp_path / "caught", follow_symlinks=True)
    assert list(tmp_path.iterdir()) == []


def test_named_fallback_unlinks_before_returning(tmp_path: Path) -> None:
    from anonshm import _unix

    pending: list[int] = []
    _unix.backing_file(pending, str(tmp_path), twin=True)  # the named strategy
    fd, twin = pending
    os.close(twin)
    try:
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0
        assert not os.get_inheritable(fd)
        assert list(tmp_path.iterdir()) == []
        # It imports as an anonymous memory like any other.
        os.ftruncate(fd, 10)
        with AnonymousMemory.from_token(f"{fd}:1") as mem:
            assert mem.size == 10
    finally:
        os.close(fd)


def test_missing_directory_is_a_clear_os_error(tmp_path: Path, no_leaks: None) -> None:
    with pytest.raises(FileNotFoundError):
        AnonymousMemory(10, directory=tmp_path / "missing")


def test_directory_that_is_a_file_is_an_os_error(tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        AnonymousMemory(10, directory=path)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_unwritable_directory_is_a_permission_error(tmp_path: Path, no_leaks: None) -> None:
    if os.geteuid() == 0:
        # Root ignores mode bits; a read-only mount refuses everyone.
        target = Path("/proc/self")
    else:
        target = tmp_path / "ro"
        target.mkdir(mode=0o500)
    with pytest.raises(OSError) as caught:
        AnonymousMemory(10, directory=target)
    assert caught.value.errno is not None


def test_failure_after_creation_leaves_nothing(tmp_path: Path, no_leaks: None) -> None:
    # Reserving more than the disk has fails after the file exists: it must go.
    with pytest.raises(OSError):
        AnonymousMemory(2**62, directory=tmp_path, reserve=True)
    assert list(tmp_path.iterdir()) == []


def test_reserve_allocates_the_pages() -> None:
    size = 8 * 1024 * 1024
    with AnonymousMemory(size, reserve=True) as mem:
        assert os.fstat(mem.fileno()).st_blocks * 512 >= size
    with AnonymousMemory(size) as lazy:
        assert os.fstat(lazy.fileno()).st_blocks == 0


def test_duplicate_is_an_independent_handle_of_the_same_memory() -> None:
    with AnonymousMemory(32, name="dup") as mem:
        copy = mem.duplicate()
        assert copy.fileno() != mem.fileno()
        assert os.fstat(copy.fileno()).st_ino == os.fstat(mem.fileno()).st_ino
        mem.close()
        with copy, copy.map() as view:
            view[:2] = b"ok"
            assert copy.name == "dup"


def test_read_only_duplicate_refuses_writable_maps() -> None:
    with AnonymousMemory(32) as mem, mem.duplicate(protection=Protection.READ_ONLY) as ro:
        assert ro.protection is Protection.READ_ONLY
        with pytest.raises(PermissionError, match="READ_ONLY"):
            ro.map(protection=Protection.READ_WRITE)
        with pytest.raises(PermissionError):
            ro.duplicate(protection=Protection.READ_WRITE)


def test_freeze_keeps_earlier_maps_and_refuses_new_writes() -> None:
    with AnonymousMemory(4096, name="frozen") as mem:
        if not FEATURES.freeze:
            assert_freeze_refused(mem)
            return
        writer = mem.map()
        writer[:3] = b"abc"
        old_fd = mem.fileno()
        mem.freeze()
        assert mem.frozen
        assert mem.protection is Protection.READ_ONLY
        assert is_closed(old_fd) or os.fstat(old_fd).st_ino != os.fstat(mem.fileno()).st_ino
        writer[3:6] = b"def"  # the producer's map made before the freeze still writes
        with mem.map() as reader:
            assert reader[:6] == b"abcdef"
        with pytest.raises(PermissionError):
            mem.map(protection=Protection.READ_WRITE)
        with pytest.raises(OSError):
            os.pwrite(mem.fileno(), b"x", 0)
        assert mem.export() == f"{mem.fileno()}:0"
        mem.freeze()  # again: nothing to do


def test_freeze_refused_where_the_kernel_cannot_seal(tmp_path: Path) -> None:
    with AnonymousMemory(10, directory=tmp_path) as mem:
        with pytest.raises(AnonShmError, match="cannot freeze"):
            mem.freeze()
        assert not mem.frozen
    with AnonymousMemory(10, protection=Protection.READ_ONLY) as ro:
        with pytest.raises(AnonShmError, match="read-only"):
            ro.freeze()


def test_importing_a_memory_this_process_holds_closes_nothing_it_owns() -> None:
    with AnonymousMemory(64) as mem:
        token = mem.export()
        first = AnonymousMemory.from_token(token)
        second = AnonymousMemory.from_token(token)
        first.close()
        second.close()
        assert not is_closed(mem.fileno())
        with mem.map() as view:
            view[0] = 7


def test_a_token_asking_more_than_its_descriptor_is_refused() -> None:
    with AnonymousMemory(64) as mem, mem.duplicate(protection=Protection.READ_ONLY) as ro:
        with pytest.raises(TokenError, match="read-only"):
            AnonymousMemory.from_token(f"{ro.fileno()}:1")
        for prot in (0, 2):
            with AnonymousMemory.from_token(f"{ro.fileno()}:{prot}") as got:
                assert got.protection == prot


@pytest.mark.parametrize("backend", ["memfd", "directory"])
def test_thousands_of_cycles_leak_nothing(backend: str, tmp_path: Path) -> None:
    # The directory memories go to a private directory, checked whole; of the shared
    # /dev/shm only names anonshm could have made are looked at (other programs use it).
    directory = tmp_path if backend == "directory" else None
    made: set[tuple[int, int]] = set()
    gc.collect()
    fds_before, maps_before = open_fds(), mapping_lines()
    for i in range(2000):
        with AnonymousMemory(4096 + i % 3, directory=directory) as mem:
            made.add(file_id(mem.fileno()))
            with mem.map(i % 100, 10) as view:
                view[0] = i % 256
            kept = mem.map()
            kept[1] = 1  # closed by the memory's with block
            if i % 10 == 0:
                with AnonymousMemory.from_token(mem.export()) as again:
                    assert again.size == mem.size
    gc.collect()
    assert open_fds() == fds_before
    assert mapping_lines() == maps_before
    assert list(tmp_path.iterdir()) == []
    assert shm_names_of(made) == set()


def test_a_tmpfs_file_is_not_reported_frozen() -> None:
    # Every tmpfs file carries F_SEAL_SEAL; that alone refuses no write.
    with AnonymousMemory(10, directory="/dev/shm") as mem:
        assert not mem.frozen
        with pytest.raises(AnonShmError, match="cannot freeze"):
            mem.freeze()
        assert not mem.frozen


def test_freeze_through_a_second_handle_makes_the_first_read_only_too() -> None:
    with AnonymousMemory(10) as mem, mem.duplicate() as other:
        if not FEATURES.freeze:
            assert_freeze_refused(mem)
            assert_freeze_refused(other)
            return
        mem.freeze()
        assert other.frozen
        assert other.protection.name == "READ_WRITE"  # its descriptor is still O_RDWR
        with pytest.raises(PermissionError, match="frozen"):
            other.map()
        other.freeze()  # already frozen: this handle just drops to read-only
        assert other.protection is Protection.READ_ONLY
        with other.map() as view:
            assert view.buf.readonly
        with AnonymousMemory.from_token(other.export()) as imported:
            assert imported.protection is Protection.READ_ONLY
            assert imported.frozen


def test_importing_read_only_takes_a_read_only_descriptor() -> None:
    import fcntl

    with AnonymousMemory(16, name="rw") as mem:
        for prot in (0, 2):
            with AnonymousMemory.from_token(f"{mem.fileno()}:{prot}") as got:
                access = fcntl.fcntl(got.fileno(), fcntl.F_GETFL) & os.O_ACCMODE
                assert got.protection == prot
                with pytest.raises(PermissionError, match="READ_WRITE"):
                    got.map(protection=Protection.READ_WRITE)
                if not REOPENS_READ_ONLY:
                    # Documented: nothing can make this descriptor read-only (no /proc
                    # on macOS), so the handle keeps the read-write one it was given.
                    assert access == os.O_RDWR
                    continue
                assert access == os.O_RDONLY
                # Handed on, it must not give the next holder write access back.
                with pytest.raises(TokenError, match="read-only"):
                    AnonymousMemory.from_token(f"{got.fileno()}:1")


def test_the_safety_net_closes_the_descriptor_even_when_warnings_are_errors() -> None:
    code = """
        import gc, os
        from anonshm import AnonymousMemory
        mem = AnonymousMemory(16)
        fd = mem.fileno()
        del mem
        gc.collect()
        try:
            os.fstat(fd)
        except OSError:
            print("closed")
        else:
            print("LEAKED")
    """
    from tests.conftest import child_env, python_child

    argv = python_child(code)
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert result.stdout.strip() == "closed", result.stdout + result.stderr
    assert "ResourceWarning" in result.stderr


@pytest.mark.parametrize("flag", ["reserve"])
@pytest.mark.parametrize("value", ["no", 1, None], ids=repr)
def test_flags_must_be_bools(flag: str, value: object) -> None:
    with pytest.raises(TypeError, match=f"{flag} must be True or False"):
        AnonymousMemory(16, **{flag: value})  # type: ignore[arg-type]
    with AnonymousMemory(16) as mem:
        for name in ("populate", "hugepages"):
            with pytest.raises(TypeError, match=f"{name} must be True or False"):
                mem.map(**{name: value})  # type: ignore[arg-type]


def test_directory_may_be_bytes_or_a_path(tmp_path: Path) -> None:
    for directory in (bytes(tmp_path), tmp_path, str(tmp_path)):
        with AnonymousMemory(16, directory=directory) as mem:  # type: ignore[arg-type]
            assert mem.size == 16
    assert list(tmp_path.iterdir()) == []


def test_close_racing_map_in_threads_leaves_no_map_open() -> None:
    import threading

    for _ in range(300):
        mem = AnonymousMemory(4096)
        made: list[object] = []
        start = threading.Barrier(2)

        def mapper(
            mem: AnonymousMemory = mem,
            made: list[object] = made,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            for _ in range(20):
                try:
                    made.append(mem.map())
                except ValueError:  # closed: the only error a racing map may see
                    return

        thread = threading.Thread(target=mapper)
        thread.start()
        start.wait()
        mem.close()
        thread.join()
        assert all(view.closed for view in made)  # type: ignore[attr-defined]
