"""Channels where the backend has none (Windows): each door says so, clearly.

A channel's reader receives the memory and the records' pipe over a Unix socket with
``SCM_RIGHTS``; the windows backend's sockets carry no handles, so for now there is
no channel there, and every way to make or import an end raises ``AnonShmError``.
"""

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    import socket
    from typing import NoReturn, final
else:
    from ._compat import final

from ._hints import join  # noqa: E402

join(globals(), "NoReturn", "socket")

__all__ = ["ChannelReader", "ChannelWriter"]


def _refuse() -> "NoReturn":
    from ._channel import unsupported  # noqa: PLC0415 - one message for both places

    raise unsupported()


class _End:
    """No end can be made, so none of this ever runs: it types what spawn asks of one."""

    name = "anonshm"
    closed = True

    def __init__(self) -> None:
        _refuse()

    def fileno(self) -> int:
        """Refused: this backend has no channels."""
        _refuse()

    def _handoff_fd(self, pending: list[int]) -> None:
        _refuse()

    @classmethod
    def inherited(cls, name: str = "anonshm") -> "NoReturn":
        """Refused: this backend has no channels."""
        _refuse()

    @classmethod
    def receive(cls, sock: "socket.socket") -> "NoReturn":
        """Refused: this backend has no channels."""
        _refuse()


@final
class ChannelReader(_End):
    """The reading end of a channel: not on this backend.

    Example:
        >>> from anonshm import AnonShmError, ChannelReader
        >>> try:
        ...     ChannelReader.inherited("frames")
        ... except AnonShmError:
        ...     print("refused")
        refused
    """


@final
class ChannelWriter(_End):
    """The writing end of a channel: not on this backend.

    Example:
        >>> from anonshm import AnonShmError, ChannelWriter
        >>> try:
        ...     ChannelWriter.inherited("results")
        ... except AnonShmError:
        ...     print("refused")
        refused
    """
