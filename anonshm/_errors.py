"""The exceptions anonshm raises.

The tree::

    Exception
     └── AnonShmError                   every error anonshm raises itself
          ├── TokenError (ValueError)    a token, descriptor or handoff message is not
          │                              an anonymous memory that may be imported
          ├── InheritError (LookupError) no usable inherited memory of that name
          │                              (absent, or NSPR_INHERIT_FDS malformed)
          └── ChannelError               a channel's peer broke its protocol (a hostile
                                         or confused writer or reader), or a
                                         descriptor handed over is no channel end

A channel's ordinary ends are the built-in exceptions: ``EOFError`` (the writer closed
and every message was read), ``BrokenPipeError`` (the reader is gone),
``TimeoutError``.

Errors from the kernel are not wrapped: they pass through as ``OSError`` (with the
errno the kernel gave), chained from when anonshm adds context.  Bad arguments are the
usual ``TypeError`` / ``ValueError``; a map that the memory's protection does not
allow is a ``PermissionError``.  All of these pickle, so they can cross a process
boundary (a multiprocessing pool re-raises them in the parent).
"""

__all__ = ["AnonShmError", "ChannelError", "InheritError", "TokenError"]


class AnonShmError(Exception):
    """Base class of the errors that anonshm raises itself.

    Example:
        >>> from anonshm import AnonShmError, AnonymousMemory
        >>> with AnonymousMemory(8, directory="/tmp") as mem:
        ...     try:
        ...         mem.freeze()  # a file in a directory cannot be sealed
        ...     except AnonShmError as exc:
        ...         print("refused:", str(exc).split(":")[0])
        refused: cannot freeze 'anonshm'
    """


class TokenError(AnonShmError, ValueError):
    """An exported token, or a descriptor handed over, cannot be imported.

    Raised for a malformed token, a descriptor that is not open, one that is not an
    anonymous shared memory (a pipe, a socket, a named file, ...), or a protection that
    asks more than the descriptor allows.  The message says which.

    Example:
        >>> from anonshm import AnonymousMemory, TokenError
        >>> try:
        ...     AnonymousMemory.from_token("3:1 ")
        ... except TokenError as exc:
        ...     print(str(exc)[:40])
        malformed token '3:1 ': expected '<fd>:<
    """


class InheritError(AnonShmError, LookupError):
    """No inherited memory of the asked name can be used.

    Raised when ``NSPR_INHERIT_FDS`` is absent, malformed, lacks the name, or names a
    descriptor that is not an anonymous shared memory.  The message says which.

    Example:
        >>> import os
        >>> from anonshm import AnonymousMemory, InheritError
        >>> os.environ.pop("NSPR_INHERIT_FDS", None) and None
        >>> try:
        ...     AnonymousMemory.inherited("frame")
        ... except InheritError as exc:
        ...     print(exc)
        no memory 'frame' was inherited: NSPR_INHERIT_FDS is not set
    """


class ChannelError(AnonShmError):
    """A channel's peer broke the protocol, or what was handed over is no channel end.

    Raised by a :class:`~anonshm.ChannelReader` whose writer names a slot that does
    not exist or that the reader still holds, or a length beyond the slot; by a
    :class:`~anonshm.ChannelWriter` whose reader gives back a slot it never had; and
    by the imports of an end (``inherited``, ``receive``, multiprocessing) given a
    descriptor that is not one.  The end that raised it is broken for good: every
    later call raises the same error, and only ``close()`` is left to do.

    Example:
        >>> import os
        >>> from anonshm import ChannelError, ChannelReader
        >>> pipe, other = os.pipe()  # a descriptor that is no channel end
        >>> os.environ["NSPR_INHERIT_FDS"] = f"frames:2:0x{pipe:x}"
        >>> try:
        ...     ChannelReader.inherited("frames")
        ... except ChannelError as exc:
        ...     print(str(exc).split(") ")[1])
        is not a Unix stream socket, so not a channel end
        >>> del os.environ["NSPR_INHERIT_FDS"]; os.close(pipe); os.close(other)
    """
