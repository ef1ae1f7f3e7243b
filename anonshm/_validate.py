"""Whether a descriptor handed to this process is anonymous memory it may import.

Checks only, on what the backend found out (``_backend.Inspected``); no system calls.
A descriptor from a token, an inheritance, a socket or multiprocessing passes through
:func:`check` before anything maps it.
"""

import mmap
import sys

from ._wire import READ_ONLY, READ_WRITE

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from typing import Final

    from ._backend import Inspected
    from ._errors import AnonShmError

__all__ = ["check", "exact_size"]

# macOS reports a shared memory object's size rounded up to whole pages (its pshm_stat):
# there, a size announced by the sender that rounds up to the one seen is the memory's.
ROUNDS_SIZES: "Final" = sys.platform == "darwin"


def _rounded(seen: int, announced: int, page: int = mmap.PAGESIZE) -> bool:
    return ROUNDS_SIZES and 0 < announced <= seen == -(-announced // page) * page


def exact_size(info: "Inspected", announced: int | None) -> int:
    """The memory's size: the one announced where the kernel rounds what it reports."""
    return announced if announced is not None and _rounded(info.size, announced) else info.size


def check(
    info: "Inspected",
    protection: int | None,
    error: "type[AnonShmError]",
    what: str,
    *,
    size: int | None = None,
    stable: bool = False,
    handed: bool = False,
) -> int:
    """The protection to import with; ``error`` (naming ``what``) if it may not be.

    Args:
        info: what the backend found out about the descriptor.
        protection: what the importer asks (a token's), or None: the descriptor's own.
        error: the exception to raise (``TokenError``, ``InheritError``).
        what: how the messages name the memory.
        size: the size the sender announced, if any.
        stable: refuse memory whose pages another holder can take away (resizable, or
            revocable huge pages): ``receive()`` by default.
        handed: the protection is what the sender's handle had when it sent; a memory
            frozen since arrives READ_ONLY (a token's asks for itself instead).
    """
    if info.kind is not None:
        raise error(f"{what} is {info.kind}, not an anonymous shared memory")
    if info.named:
        raise error(f"{what} is a named file (it has a path), not an anonymous memory")
    if info.size < 1:
        raise error(f"{what} is empty: an anonymous memory has at least 1 byte")
    if size is not None and info.size != size and not _rounded(info.size, size):
        raise error(f"{what} is {info.size} bytes, but {size} were announced")
    if info.access in ("w", "path"):
        mode = "write-only" if info.access == "w" else "with O_PATH"
        raise error(f"{what} is open {mode} and cannot be mapped")
    if stable and not info.fixed_size:
        raise error(
            f"{what} can be resized by its other holders (its size is not sealed); "
            "receive(sock, allow_resizable=True) accepts it anyway"
        )
    if stable and info.revocable:
        raise error(
            f"{what} is backed by huge pages that its other holders can take back (hole "
            "punching) unless it is frozen; receive(sock, allow_resizable=True) accepts "
            "it anyway"
        )
    writable = info.access == "rw"
    if protection is None:
        return READ_WRITE if writable and not info.frozen else READ_ONLY
    if protection == READ_WRITE and not writable:
        raise error(f"{what} asks READ_WRITE, but the descriptor is read-only")
    if protection == READ_WRITE and info.frozen:
        if not handed:
            raise error(f"{what} asks READ_WRITE, but the memory is frozen")
        return READ_ONLY  # frozen after it was sent: no holder may write now
    return protection
