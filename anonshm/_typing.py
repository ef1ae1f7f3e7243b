"""The two typing decorators anonshm applies at run time, without importing typing.

``import typing`` costs about 8 ms, a third of what a fresh child spends on
``import anonshm`` (benchmarks/, "import cost"); a child that maps inherited memory
should not pay it.  So the package imports typing only for type checkers, under
``TYPE_CHECKING`` (a module-level ``False`` that mypy and ruff read as the typing
constant), and takes ``final`` and ``overload`` from here: the real ones for checkers,
at run time decorators that return what they are given (all that matters to Python:
``@overload`` stubs are replaced by the implementation that follows them).
"""

from __future__ import annotations

__all__ = ["final", "overload"]

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import final, overload
else:

    def final(obj):
        return obj

    def overload(func):
        return func
