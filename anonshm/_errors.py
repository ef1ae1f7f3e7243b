"""The exceptions anonshm raises.

The tree::

    Exception
     └── AnonShmError                   every error anonshm raises itself
          ├── TokenError (ValueError)    a token, descriptor or handoff message is not
          │                              an anonymous memory that may be imported
          └── InheritError (LookupError) no usable inherited memory of that name
                                         (absent, or NSPR_INHERIT_FDS malformed)

Errors from the kernel are not wrapped: they pass through as ``OSError`` (with the
errno the kernel gave), chained from when anonshm adds context.  Bad arguments are the
usual ``TypeError`` / ``ValueError``; a map that the memory's protection does not
allow is a ``PermissionError``.  All of these pickle, so they can cross a process
boundary (a multiprocessing pool re-raises them in the parent).
"""

__all__ = ["AnonShmError", "InheritError", "TokenError"]


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
