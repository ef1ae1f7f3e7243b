"""The one place that chooses the platform backend.

A backend is a module of plain functions making the system calls (see ``_linux``):
``create``, ``seals``, ``freeze``, ``reopen_readonly``, ``kernel_name``, and the
constants ``FIXED_SIZE_SEALS`` and ``FREEZE_SEALS``.  Linux is the platform anonshm is
built and tested on; another POSIX system gets its own module beside ``_linux``.
"""

from __future__ import annotations

import sys

if sys.platform == "linux":
    from ._linux import (
        FIXED_SIZE_SEALS,
        FREEZE_SEALS,
        WRITE_SEALS,
        create,
        freeze,
        kernel_name,
        reopen_readonly,
        seals,
    )

    NAME = "linux"
    DEFAULT_STRATEGY = "memfd_create"
else:  # pragma: no cover - no backend yet: fail at import with a clear message
    raise ImportError(f"anonshm has no backend for {sys.platform!r} yet (Linux only)")

__all__ = [
    "DEFAULT_STRATEGY",
    "FIXED_SIZE_SEALS",
    "FREEZE_SEALS",
    "NAME",
    "WRITE_SEALS",
    "create",
    "freeze",
    "kernel_name",
    "reopen_readonly",
    "seals",
]
