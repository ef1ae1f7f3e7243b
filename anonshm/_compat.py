"""Every trick that keeps ``import anonshm`` light, in one place.

A child that only maps the memory it inherited should not pay for ``typing`` (~6 ms in
a fresh interpreter), ``enum`` (~3 ms) or ``subprocess``: more than a small handoff
costs (benchmarks/).  So at run time:

- ``final`` and ``overload`` are stand-ins that do what matters to Python (an
  ``@overload`` stub is replaced by the implementation that follows it); checkers see
  typing's own, through the guarded imports.
- Inside the package a protection is a plain int (``_wire``); the public ``Protection``
  enum is loaded the first time a caller asks for one (:func:`protection_member`).
- The default ``protection=`` of ``AnonymousMemory`` is that plain int, shown by
  ``help()`` as ``Protection.READ_WRITE``.
- Each module says ``TYPE_CHECKING = __name__ == "typing"`` instead of importing it from
  ``typing``: False when run (no module of anonshm is named ``typing``), while type
  checkers take any ``TYPE_CHECKING`` as True, and editors (jedi), which cannot fold the
  comparison, read the guarded imports too -- with ``TYPE_CHECKING = False`` they skip
  them, and never see ``spawn``, ``Protection`` or what the annotations name.
"""

from ._wire import READ_WRITE

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from typing import Final, final, overload

    from ._protection import Protection

    DEFAULT_PROTECTION: Final = Protection.READ_WRITE
else:

    def final(obj):
        return obj

    def overload(func):
        return func

    class _ReadWriteDefault(int):
        """Protection.READ_WRITE's value, shown as such by help() (enum is not loaded)."""

        __slots__ = ()

        def __repr__(self) -> str:
            return "Protection.READ_WRITE"

    DEFAULT_PROTECTION = _ReadWriteDefault(READ_WRITE)

__all__ = ["DEFAULT_PROTECTION", "final", "overload", "protection_member"]

_members: "tuple[Protection, ...]" = ()  # Protection's members by value, once loaded


def protection_member(value: int) -> "Protection":
    """The public Protection for a checked int (the enum is imported on first use)."""
    if not _members:
        _load_members()
    return _members[value]


def _load_members() -> None:
    global _members
    from ._protection import Protection  # noqa: PLC0415 - the point: enum only when asked

    _members = tuple(Protection)
