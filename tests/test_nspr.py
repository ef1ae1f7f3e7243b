"""Interoperability with real NSPR 4.35: NSPR and anonshm as parent and child of each other.

The NSPR peers are small C programs in ``tests/nspr/``, built once per session with
``gcc $(pkg-config --cflags --libs nspr)``.  Every test moves real bytes both ways: the
parent writes a pattern, the child checks it and (when it may) writes an answer, and the
parent checks the answer.  The formulas of :func:`pattern` and :func:`answer` are also in
``tests/nspr/interop.h`` and in ``_PY_CHILD``; any drift fails every test here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from anonshm import AnonymousMemory, Protection, TokenError, spawn
from tests.conftest import FEATURES, assert_freeze_refused, child_env, is_closed

if TYPE_CHECKING:
    from collections.abc import Sequence

pytestmark = pytest.mark.nspr

NSPR_SOURCES = Path(__file__).resolve().parent / "nspr"
TIMEOUT = 30
# Not a page multiple, and more than one page: an exact size is checked at both ends.
SIZE = 3 * 4096 + 123
SIZE2 = 5000
STALE_FD = 1000  # open neither here nor in a child
STALE_ENTRY = f"frame:1:0x{STALE_FD:x}"
_CFLAGS = ("gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1")


def pattern(size: int, seed: int) -> bytes:
    """What a parent writes into memory number ``seed`` (``pattern_byte`` in interop.h)."""
    return bytes(((i ^ (i >> 8)) * 7 + seed) & 0xFF for i in range(size))


def answer(size: int, seed: int) -> bytes:
    """What a child writes back (``answer_byte`` in interop.h)."""
    return bytes(((i ^ (i >> 8)) * 13 + seed + 101) & 0xFF for i in range(size))


# The anonshm child of an NSPR parent: argv is SOURCE ACTION KEY..., memory i has seed i+1.
_PY_CHILD = """
import os
import sys

from anonshm import AnonymousMemory, Protection

def pattern(size, seed):
    return bytes(((i ^ (i >> 8)) * 7 + seed) & 0xFF for i in range(size))

def answer(size, seed):
    return bytes(((i ^ (i >> 8)) * 13 + seed + 101) & 0xFF for i in range(size))

source, action, *keys = sys.argv[1:]
print("py-env", os.environ.get("NSPR_INHERIT_FDS"))
for seed, key in enumerate(keys, start=1):
    if source == "token":
        mem = AnonymousMemory.from_token(key)
    else:
        mem = AnonymousMemory.inherited(key)
    with mem:
        print("py-mem", key, mem.size, mem.protection.name)
        with mem.map() as view:
            assert view.buf == pattern(mem.size, seed), f"{key}: pattern differs"
            if action in ("write", "private"):
                view.buf[:] = answer(mem.size, seed)
                assert view.buf == answer(mem.size, seed), f"{key}: answer not readable"
        if action != "write":
            try:
                mem.map(protection=Protection.READ_WRITE)
            except PermissionError:
                print("py-refused", key)
            else:
                raise AssertionError(f"{key}: READ_WRITE map of a {mem.protection.name} memory")
"""


@dataclass(frozen=True)
class Programs:
    """The built NSPR peers."""

    parent: Path
    child: Path


def _toolchain_problem() -> str | None:
    for tool in ("gcc", "pkg-config"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    found = subprocess.run(
        ["pkg-config", "--exists", "nspr"], capture_output=True, timeout=TIMEOUT, check=False
    )
    if found.returncode != 0:
        return "pkg-config finds no nspr (install libnspr4-dev)"
    return None


@pytest.fixture(scope="session")
def nspr(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    """Build the NSPR peers; skip without a toolchain, except under CI, where it fails."""
    problem = _toolchain_problem()
    if problem is not None:
        reason = f"NSPR interop tests need gcc, pkg-config and libnspr4-dev: {problem}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: these tests must run)")
        pytest.skip(reason)
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "nspr"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout
    out = tmp_path_factory.mktemp("nspr-bin")
    built = {}
    for name in ("nspr_parent", "nspr_child"):
        binary = out / name
        result = subprocess.run(
            [*_CFLAGS, "-o", str(binary), str(NSPR_SOURCES / f"{name}.c"), *shlex.split(flags)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"building {name} failed:\n{result.stderr}"
        built[name] = binary
    return Programs(parent=built["nspr_parent"], child=built["nspr_child"])


def _run(
    argv: Sequence[str | os.PathLike[str]],
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    result = subprocess.run(
        [os.fspath(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=child_env() if env is None else env,
        pass_fds=pass_fds,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


@dataclass(frozen=True)
class Finished:
    """What an NSPR child started by spawn() left."""

    returncode: int
    out: str
    err: str
    fds: dict[str, int]

    def check(self) -> str:
        """Fail unless the child exited 0; return its stdout."""
        assert self.returncode == 0, f"NSPR child failed ({self.returncode}):\n{self}"
        return self.out


def _spawn_nspr_child(
    nspr: Programs, args: Sequence[str], inherit: dict[str, AnonymousMemory]
) -> Finished:
    """Run the NSPR child with ``inherit`` passed by anonshm.spawn (the first protocol)."""
    with spawn(
        [os.fspath(nspr.child), *args],
        inherit=inherit,
        # A stale entry under a name in use: spawn must replace the variable.
        env=child_env(NSPR_INHERIT_FDS=STALE_ENTRY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode is not None
    return Finished(child.returncode, out or "", err or "", dict(child.inherited))


def _nspr_parent(
    nspr: Programs,
    directory: Path,
    *,
    prot: Protection,
    source: str,
    names: Sequence[str],
    expect: str,
    action: str,
    child_keys: Sequence[str] = (),
) -> str:
    """Run the NSPR parent with an anonshm child; return stdout (both processes')."""
    argv = [os.fspath(nspr.parent), os.fspath(directory), str(SIZE), str(prot.value), source]
    argv += [",".join(names), expect, sys.executable, "-c", _PY_CHILD, source, action, *child_keys]
    # A stale entry under the first name: PR_CreateProcess must replace the variable.
    returncode, out, err = _run(argv, env=child_env(NSPR_INHERIT_FDS=STALE_ENTRY))
    assert returncode == 0, f"NSPR parent failed ({returncode}):\n{out}\n{err}"
    for name in names:
        assert f"{name}: {expect} ok" in out
    assert "child exit 0" in out
    return out


def _lines(out: str, prefix: str) -> list[list[str]]:
    return [line.split()[1:] for line in out.splitlines() if line.startswith(prefix + " ")]


@pytest.mark.parametrize(
    ("prot", "action", "expect"),
    [
        (Protection.READ_WRITE, "write", "answer"),
        (Protection.READ_ONLY, "read", "pattern"),
        (Protection.WRITE_COPY, "private", "pattern"),
    ],
    ids=["read-write", "read-only", "write-copy"],
)
def test_nspr_parent_token_to_anonshm_child(
    nspr: Programs, tmp_path: Path, prot: Protection, action: str, expect: str
) -> None:
    """PR_OpenAnonFileMap + PR_ExportFileMapAsString; the child uses from_token."""
    out = _nspr_parent(
        nspr, tmp_path, prot=prot, source="token", names=["a"], expect=expect, action=action
    )
    [[name, token]] = _lines(out, "token")
    assert name == "a"
    # NSPR's token is "<fd>:<prot>" and its prot is the one anonshm reads.
    assert re.fullmatch(rf"[0-9]+:{prot.value}", token)
    assert _lines(out, "py-mem") == [[token, str(SIZE), prot.name]]
    assert _lines(out, "py-refused") == ([] if action == "write" else [[token]])
    # PR_OpenAnonFileMap leaves no name behind in the directory.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("names", [["frame"], ["frame", "frame2"]], ids=["one", "two"])
def test_nspr_parent_inherit_to_anonshm_child(
    nspr: Programs, tmp_path: Path, names: list[str]
) -> None:
    """PR_ProcessAttrSetInheritableFD; the child uses AnonymousMemory.inherited."""
    out = _nspr_parent(
        nspr,
        tmp_path,
        prot=Protection.READ_WRITE,
        source="inherit",
        names=names,
        expect="answer",
        action="write",
        child_keys=names,
    )
    # The seed's first protocol does not exist in NSPR: this is why the fd channel is used.
    assert "PR_ProcessAttrSetInheritableFileMap: PR_NOT_IMPLEMENTED_ERROR" in out
    fds = {name: int(fd.removeprefix("fd=")) for name, fd in _lines(out, "inherit")}
    assert list(fds) == names
    expected_env = ":".join(f"{name}:1:0x{fd:x}" for name, fd in fds.items())
    assert _lines(out, "py-env") == [[expected_env]]
    assert _lines(out, "py-mem") == [[name, str(SIZE), "READ_WRITE"] for name in names]


@pytest.mark.parametrize(
    ("protection", "action", "expect_answer"),
    [
        (Protection.READ_WRITE, "write", True),
        (Protection.READ_ONLY, "readonly", False),
        (Protection.WRITE_COPY, "private", False),
    ],
    ids=["read-write", "read-only", "write-copy"],
)
def test_anonshm_parent_token_to_nspr_child(
    nspr: Programs,
    no_leaks: None,
    protection: Protection,
    action: str,
    expect_answer: bool,
) -> None:
    """export() + pass_fds; the child uses PR_ImportFileMapFromString and PR_MemMap."""
    with AnonymousMemory(SIZE, name="nspr-token") as mem:
        with mem.map() as view:
            view.buf[:] = pattern(SIZE, 1)
        # The creator's own handle for READ_WRITE; a read-only duplicate otherwise.
        exported: AbstractContextManager[AnonymousMemory] = (
            nullcontext(mem)
            if protection is Protection.READ_WRITE
            else mem.duplicate(protection=protection)
        )
        with exported as handle:
            token = handle.export()
            assert token == f"{handle.fileno()}:{protection.value}"
            argv = [os.fspath(nspr.child), "token", token, str(SIZE), action, "1"]
            returncode, out, err = _run(argv, pass_fds=[handle.fileno()])
            assert returncode == 0, f"NSPR child failed ({returncode}):\n{out}\n{err}"
            assert f"{token}: {action} ok" in out
            if action == "readonly":
                # NSPR trusts the token: the import succeeds and only the mmap fails.
                # anonshm refuses the same token up front.
                fd = handle.fileno()
                assert f"import {fd}:1 as READWRITE: accepted" in out
                assert "PR_MemMap READWRITE: refused" in out
                with pytest.raises(TokenError, match="read-only"):
                    AnonymousMemory.from_token(f"{fd}:1")
        with mem.map() as view:
            assert view.buf == (answer(SIZE, 1) if expect_answer else pattern(SIZE, 1))


def test_anonshm_parent_inherit_to_nspr_child(nspr: Programs, no_leaks: None) -> None:
    """spawn(inherit=[two memories]); NSPR parses NSPR_INHERIT_FDS with PR_GetInheritedFD."""
    # "frame" is a prefix of "frame2" and "fram" of both: the lookup must be exact.
    with (
        AnonymousMemory(SIZE, name="frame") as first,
        AnonymousMemory(SIZE2, name="frame2") as second,
    ):
        for seed, mem in enumerate([first, second], start=1):
            with mem.map() as view:
                view.buf[:] = pattern(mem.size, seed)
        args = ["inherit", "frame", str(SIZE), "write", "1"]
        args += ["inherit", "frame2", str(SIZE2), "write", "2"]
        args += ["inherit", "fram", "1", "absent", "0"]
        finished = _spawn_nspr_child(nspr, args, {"frame": first, "frame2": second})
        out, fds = finished.check(), finished.fds
        assert list(fds) == ["frame", "frame2"]
        assert f"frame: fd={fds['frame']} size={SIZE}" in out
        assert f"frame2: fd={fds['frame2']} size={SIZE2}" in out
        assert "fram: absent: not found" in out
        for seed, mem in enumerate([first, second], start=1):
            with mem.map() as view:
                assert view.buf == answer(mem.size, seed)


@pytest.mark.parametrize("how", ["duplicate", "freeze"])
def test_read_only_handoff_to_nspr_child(nspr: Programs, no_leaks: None, how: str) -> None:
    """A read-only memory inherited by NSPR maps READONLY, and NSPR cannot map it writable."""
    with AnonymousMemory(SIZE, name="ro") as mem, mem.map() as view:
        view.buf[:] = pattern(SIZE, 1)
        if how == "freeze":
            if not FEATURES.freeze:
                assert_freeze_refused(mem)
                return
            mem.freeze()
            handle = mem.duplicate()
        else:
            handle = mem.duplicate(protection=Protection.READ_ONLY)
        with handle:
            assert handle.protection is Protection.READ_ONLY
            args = ["inherit", "ro", str(SIZE), "readonly", "1"]
            out = _spawn_nspr_child(nspr, args, {"ro": handle}).check()
        assert "ro: readonly ok" in out
        # PR_CreateFileMap does not look at the descriptor; the kernel refuses the mmap.
        assert "ro: PR_CreateFileMap READWRITE: accepted" in out
        assert "ro: PR_MemMap READWRITE: refused" in out
        assert view.buf == pattern(SIZE, 1)


def test_nspr_child_cannot_grow_sealed_memory(nspr: Programs, no_leaks: None) -> None:
    """PR_CreateFileMap with a size above the file's tries to grow it; the seal refuses."""
    with AnonymousMemory(SIZE, name="sealed") as mem:
        args = ["inherit", "sealed", str(SIZE + 1), "write", "1"]
        finished = _spawn_nspr_child(nspr, args, {"sealed": mem})
        if not FEATURES.fixed_size:
            # What the documentation warns about: without seals, any holder resizes it.
            assert not mem.fixed_size
            assert "PR_CreateFileMap failed" not in finished.err, finished
            assert os.fstat(mem.fileno()).st_size == SIZE + 1
            return
        assert finished.returncode == 2, f"NSPR child did not fail as expected:\n{finished}"
        # EPERM (errno 1) is the memfd's F_SEAL_GROW refusing NSPR's one-byte write at size-1.
        assert "PR_CreateFileMap failed" in finished.err
        assert "errno 1\n" in finished.err
        assert os.fstat(mem.fileno()).st_size == SIZE
        with mem.map() as view:
            assert view.buf == bytes(SIZE)


def test_unknown_prot_nspr_maps_a_private_copy_anonshm_refuses(
    nspr: Programs, no_leaks: None
) -> None:
    """NSPR takes any prot in a token and maps an unknown one copy-on-write, silently."""
    with AnonymousMemory(SIZE, name="prot") as mem:
        with mem.map() as view:
            view.buf[:] = pattern(SIZE, 1)
        token = f"{mem.fileno()}:7"
        returncode, out, err = _run(
            [nspr.child, "token", token, str(SIZE), "private", "1"], pass_fds=[mem.fileno()]
        )
        assert returncode == 0, f"NSPR child failed ({returncode}):\n{out}\n{err}"
        assert f"{token}: private ok" in out
        with mem.map() as view:
            assert view.buf == pattern(SIZE, 1)
        with pytest.raises(TokenError, match="malformed token"):
            AnonymousMemory.from_token(token)


def test_token_of_a_closed_descriptor_is_refused_by_both(nspr: Programs) -> None:
    """A token naming no open descriptor: NSPR's import fails, and so does anonshm's."""
    token = f"{STALE_FD}:1"
    assert is_closed(STALE_FD)
    returncode, _, err = _run([nspr.child, "token", token, str(SIZE), "read", "1"])
    assert returncode == 2
    assert "PR_ImportFileMapFromString failed" in err
    assert "PR_BAD_DESCRIPTOR_ERROR" in err
    with pytest.raises(TokenError, match="not open"):
        AnonymousMemory.from_token(token)
