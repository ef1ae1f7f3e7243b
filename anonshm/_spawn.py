"""spawn and SharedChild: NSPR's first protocol, a child that inherits memories."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    AnyStr,
    Generic,
    Literal,
    TypedDict,
    cast,
    final,
    overload,
)

from ._backend import backend
from ._channel import ChannelReader, ChannelWriter
from ._hints import join
from ._holder import Pending, close_all
from ._memory import AnonymousMemory
from ._wire import INHERIT_VARIABLE, PR_DESC_SOCKET_TCP, check_name, format_inherit_fds

if TYPE_CHECKING:
    import subprocess
    from types import TracebackType
    from typing import Self

    from typing_extensions import Unpack
join(globals(), "Self", "TracebackType", "Unpack", "subprocess")

__all__ = ["PopenOptions", "SharedChild", "spawn"]

_Arg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_Args = _Arg | Sequence[_Arg]
_File = int | IO[bytes] | IO[str] | None
_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]
# As typeshed types Popen's env: keyed by str (os.environ) or by bytes (os.environb).
_Env = Mapping[str, _Path] | Mapping[bytes, _Path]
_INHERIT_VARIABLE_BYTES = os.fsencode(INHERIT_VARIABLE)
_Handed = AnonymousMemory | ChannelReader | ChannelWriter
Inherit = Iterable[_Handed] | Mapping[str, _Handed]


class PopenOptions(TypedDict, total=False):
    """The keyword arguments of ``subprocess.Popen`` that :func:`spawn` passes on.

    Typed so that a checker catches a misspelt or mistyped option; ``text``,
    ``encoding`` and ``errors`` are :func:`spawn`'s own parameters (they choose the
    type of the child's pipes).

    Example:
        >>> import subprocess
        >>> from anonshm import PopenOptions, spawn
        >>> options: PopenOptions = {"stdout": subprocess.PIPE, "cwd": "/"}
        >>> with spawn(["pwd"], **options) as child:
        ...     child.communicate(timeout=30)[0].strip()
        b'/'
    """

    bufsize: int
    executable: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None
    stdin: _File
    stdout: _File
    stderr: _File
    shell: bool
    preexec_fn: Callable[[], object] | None
    close_fds: bool
    pass_fds: Collection[int]
    cwd: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None
    env: _Env | None
    restore_signals: bool
    start_new_session: bool
    user: str | int | None
    group: str | int | None
    extra_groups: Iterable[str | int] | None
    umask: int
    pipesize: int
    process_group: int | None


@final
class SharedChild(Generic[AnyStr]):
    """A child process started by :func:`spawn`, with the memories it inherited.

    It behaves as the ``subprocess.Popen`` inside it (:attr:`popen`): ``pid``,
    ``returncode``, ``wait``, ``poll``, ``communicate``, ``terminate``, ``kill`` and
    the ``stdin``/``stdout``/``stderr`` pipes.  As a ``with`` block it waits for the
    child when the block ends normally, and kills then reaps it when the block raises,
    so no child outlives an error unnoticed.

    Example:
        >>> import subprocess, sys
        >>> from anonshm import AnonymousMemory, spawn
        >>> code = "from anonshm import AnonymousMemory as M; print(M.inherited('x').size)"
        >>> argv = [sys.executable, "-c", code]
        >>> with AnonymousMemory(64, name="x") as mem:
        ...     with spawn(argv, inherit=[mem], stdout=subprocess.PIPE) as child:
        ...         out, _ = child.communicate(timeout=30)
        >>> out.strip()
        b'64'
    """

    def __init__(self, popen: subprocess.Popen[AnyStr], inherited: Mapping[str, int]) -> None:
        self._popen: subprocess.Popen[AnyStr] = popen
        self._inherited = dict(inherited)

    @property
    def popen(self) -> subprocess.Popen[AnyStr]:
        """The underlying ``subprocess.Popen``."""
        return self._popen

    @property
    def inherited(self) -> Mapping[str, int]:
        """Each inherited memory's name and its descriptor number in the child."""
        return dict(self._inherited)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._popen.pid

    @property
    def args(self) -> object:
        """The arguments the child was started with."""
        return self._popen.args

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else None."""
        return self._popen.returncode

    @property
    def stdin(self) -> IO[AnyStr] | None:
        """The child's stdin pipe, when started with ``stdin=subprocess.PIPE``."""
        return self._popen.stdin

    @property
    def stdout(self) -> IO[AnyStr] | None:
        """The child's stdout pipe, when started with ``stdout=subprocess.PIPE``."""
        return self._popen.stdout

    @property
    def stderr(self) -> IO[AnyStr] | None:
        """The child's stderr pipe, when started with ``stderr=subprocess.PIPE``."""
        return self._popen.stderr

    def poll(self) -> int | None:
        """Reap the child if it has exited; return ``returncode``."""
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit; ``subprocess.TimeoutExpired`` after ``timeout``."""
        return self._popen.wait(timeout)

    def communicate(
        self, input: AnyStr | None = None, timeout: float | None = None
    ) -> tuple[Any, Any]:
        """Send ``input``, read stdout and stderr to the end, wait (as ``Popen``).

        Each is ``None`` unless its pipe was asked for (``stdout=subprocess.PIPE``).
        """
        # Any, as typeshed types Popen.communicate: whether each is None depends on
        # the pipes chosen at the call, which no checker follows to here, and an
        # Optional would make every `communicate()[0].strip()` an error.
        return self._popen.communicate(input, timeout)

    def send_signal(self, sig: int) -> None:
        """Send signal ``sig`` to the child, unless it has been reaped."""
        self._popen.send_signal(sig)

    def terminate(self) -> None:
        """Ask the child to stop (``SIGTERM``)."""
        self._popen.terminate()

    def kill(self) -> None:
        """Stop the child now (``SIGKILL``)."""
        self._popen.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self._popen.returncode is None:
            self._popen.kill()
        # Popen's own exit closes the pipes and reaps the child, except after a
        # KeyboardInterrupt, when it returns at once: the killed child is reaped here.
        try:
            self._popen.__exit__(exc_type, exc, tb)
        finally:
            if exc_type is not None:
                self._popen.wait()

    def __repr__(self) -> str:
        names = ", ".join(self._inherited)
        return f"<SharedChild pid={self.pid} returncode={self.returncode} inherited=[{names}]>"


def _entries(inherit: Inherit) -> list[tuple[str, _Handed]]:
    if isinstance(inherit, _Handed):
        raise TypeError("inherit takes an iterable of memories: write inherit=[mem]")
    pairs: Iterable[tuple[str, _Handed]]
    if isinstance(inherit, Mapping):
        pairs = inherit.items()
    else:
        pairs = ((mem.name if isinstance(mem, _Handed) else "", mem) for mem in inherit)
    entries: dict[str, _Handed] = {}
    for name, mem in pairs:
        if not isinstance(mem, _Handed):
            raise TypeError(
                f"inherit takes AnonymousMemory objects and channel ends, not {type(mem).__name__}"
            )
        check_name(name)
        if name in entries:
            raise ValueError(f"two inherited memories are named {name!r}; names must be unique")
        try:
            mem.fileno()  # refused before anything is duplicated or started
        except ValueError:
            raise ValueError(_closed(name)) from None
        entries[name] = mem
    return list(entries.items())


def _closed(name: str) -> str:
    return f"spawn cannot pass memory {name!r}: it is closed"


def _duplicate(name: str, mem: _Handed, owned: list[int]) -> None:
    """Append a new duplicate of ``mem``'s descriptor to ``owned`` (the caller's to close)."""
    try:
        mem._handoff_fd(owned)
    except ValueError as exc:  # closed by another thread since _entries looked, or used
        if mem.closed:
            raise ValueError(_closed(name)) from None
        raise ValueError(f"spawn cannot pass {name!r}: {exc}") from None


def _is_inherit_variable(key: object) -> bool:
    if isinstance(key, str):
        return key == INHERIT_VARIABLE
    return isinstance(key, bytes) and key == _INHERIT_VARIABLE_BYTES


def _copy_env(env: _Env) -> dict[Any, Any]:
    """A copy of ``env``; of ``os.environ`` as it is at one instant, whatever other threads do."""
    data = getattr(env, "_data", None) if isinstance(env, os._Environ) else None
    if type(data) is dict:
        # dict(os.environ) reads the variables one at a time, in Python: one that another
        # thread deletes meanwhile makes it raise KeyError.  The dict underneath
        # (bytes -> bytes on POSIX, for os.environ and os.environb alike) is copied in
        # one C call, during which no other thread runs.
        return data.copy()
    return dict(env)


def _child_env(
    env: _Env | None, passed: Mapping[str, int], kinds: Mapping[str, int] | None = None
) -> _Env:
    """The child's environment: ``env`` (None: this one) with NSPR_INHERIT_FDS for ``passed``.

    Always a copy, never None, even when nothing is to change: given None, Popen has
    the child exec with the C library's environment as it is at the fork, and a
    ``putenv`` in another thread at that instant hands it a half-rewritten array (the
    exec fails with EFAULT: 19 to 30 of 300 plain ``Popen(["true"])`` calls, against a
    thread setting and deleting variables).
    """
    copy = _copy_env(os.environ if env is None else env)
    keyed_by_bytes = bool(copy) and all(isinstance(key, bytes) for key in copy)
    # Every spelling goes: a child reads the first of two entries, so a stale
    # b"NSPR_INHERIT_FDS" beside a fresh "NSPR_INHERIT_FDS" would win.
    for key in [key for key in copy if _is_inherit_variable(key)]:
        del copy[key]
    if passed:  # in the form the other keys take
        value = format_inherit_fds(list(passed.items()), kinds)
        if keyed_by_bytes:
            copy[_INHERIT_VARIABLE_BYTES] = os.fsencode(value)
        else:
            copy[INHERIT_VARIABLE] = value
    # Keyed as the caller's env was: by str, by bytes, or (as Popen accepts) by both.
    return cast("_Env", copy)


@overload
def spawn(
    args: _Args,
    *,
    inherit: Inherit = (),
    text: Literal[True],
    encoding: str | None = None,
    errors: str | None = None,
    **popen_kwargs: Unpack[PopenOptions],
) -> SharedChild[str]: ...
@overload
def spawn(
    args: _Args,
    *,
    inherit: Inherit = (),
    text: Literal[False] | None = None,
    encoding: str,
    errors: str | None = None,
    **popen_kwargs: Unpack[PopenOptions],
) -> SharedChild[str]: ...
@overload
def spawn(
    args: _Args,
    *,
    inherit: Inherit = (),
    text: Literal[False] | None = None,
    encoding: str | None = None,
    errors: str,
    **popen_kwargs: Unpack[PopenOptions],
) -> SharedChild[str]: ...
@overload
def spawn(
    args: _Args,
    *,
    inherit: Inherit = (),
    text: Literal[False] | None = None,
    encoding: None = None,
    errors: None = None,
    **popen_kwargs: Unpack[PopenOptions],
) -> SharedChild[bytes]: ...
@overload
def spawn(
    args: _Args,
    *,
    inherit: Inherit = (),
    text: bool | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    **popen_kwargs: Unpack[PopenOptions],
) -> SharedChild[str] | SharedChild[bytes]: ...
def spawn(
    args: _Args,
    *,
    inherit: Inherit = (),
    text: bool | None = None,
    encoding: str | None = None,
    errors: str | None = None,
    **popen_kwargs: Unpack[PopenOptions],
) -> SharedChild[str] | SharedChild[bytes]:
    """Start a child that inherits ``inherit`` (NSPR's first protocol).

    Each memory reaches the child at the number :attr:`SharedChild.inherited` reports
    (that of a duplicate made for this spawn and closed once the child has started),
    and only that child: it is passed with ``pass_fds`` (set up between fork and exec),
    never made inheritable in the parent, where a child started by another thread
    could catch it.
    The child's environment gets ``NSPR_INHERIT_FDS`` in NSPR's form
    (``name:1:0x<fd>`` entries joined by ``:``), replacing any value this process
    inherited itself (removed when nothing is inherited); the child reads it with
    :meth:`AnonymousMemory.inherited` or NSPR's ``PR_GetInheritedFD``.  The
    environment is a copy of ``env`` (by default of ``os.environ``, taken at one
    instant, so that other threads may change it meanwhile), keyed by ``str`` or by
    ``bytes`` as ``env`` is (``os.environb``), with exactly one ``NSPR_INHERIT_FDS``.

    If an exception (Ctrl-C) interrupts spawn, nothing is left open, and a child
    already started is killed and reaped before the exception goes on.

    Args:
        args: the program and its arguments, as for ``subprocess.Popen``.
        inherit: memories and channel ends (each keyed by its ``name``), or a
            ``{name: memory}`` mapping.  A channel end goes as an entry of type 2
            (a socket): the child imports it with ``ChannelReader.inherited(name)``
            or ``ChannelWriter.inherited(name)``; it must not have been used here.
        text: text mode for the pipes, as for ``Popen``.
        encoding: the pipes' encoding (text mode), as for ``Popen``.
        errors: the pipes' error handler (text mode), as for ``Popen``.
        **popen_kwargs: any other ``subprocess.Popen`` argument (``env``, ``cwd``,
            ``stdout``, ``pass_fds`` ...).

    Returns:
        The started child, best used as a ``with`` block.

    Raises:
        TypeError: ``inherit`` holds something other than memories.
        ValueError: two memories share a name, a name is invalid, a memory is closed
            (the message names it), or ``close_fds=False`` is asked with memories to
            pass (it would hand the child every inheritable descriptor besides).
        OSError: the child could not be started (as ``Popen``).

    Example:
        >>> import sys
        >>> from anonshm import AnonymousMemory, spawn
        >>> with AnonymousMemory(64, name="frame") as mem:  # doctest: +SKIP
        ...     with spawn([sys.executable, "child.py"], inherit=[mem]) as child:
        ...         child.wait(timeout=30)
    """
    entries = _entries(inherit)
    options = cast("dict[str, Any]", popen_kwargs)  # Popen's own types differ per platform
    if entries:
        backend.pass_to_child(options, [])  # refuses close_fds=False before anything is made
    from subprocess import Popen  # noqa: PLC0415 - a child that only maps memory never pays for it

    # Who owns what, whatever line an exception (Ctrl-C) lands on: each duplicate is in
    # `duplicates` from the line that makes it, and the child is in `started` from the
    # line that starts it, until it is returned.  Not a `with` block: the line that
    # leaves one can take the exception before __exit__ runs.  Closing them twice is
    # safe: close_all takes each descriptor out of the list as it closes it.
    duplicates = Pending()
    started: list[Popen[Any]] = []
    try:
        passed: dict[str, int] = {}
        for name, mem in entries:
            _duplicate(name, mem, duplicates)
            passed[name] = duplicates[-1]
        kinds = {
            name: PR_DESC_SOCKET_TCP
            for name, mem in entries
            if not isinstance(mem, AnonymousMemory)
        }
        options["env"] = _child_env(options.get("env"), passed, kinds)
        if passed:
            backend.pass_to_child(options, list(passed.values()))
        # One line: a statement spread over several has a line between the start and
        # the append, where the exception could land and lose the child.
        started.append(Popen(args, text=text, encoding=encoding, errors=errors, **options))
        close_all(duplicates)  # the child holds its own copies now
        return SharedChild(started[0], passed)
    except BaseException:
        close_all(duplicates)
        for popen in started:  # started, but never to be seen: it must not run on
            _kill_and_reap(popen)
        raise


def _kill_and_reap(popen: subprocess.Popen[Any]) -> None:
    with popen:  # closes the pipes, then waits
        popen.kill()
