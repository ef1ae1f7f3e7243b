"""``python -m anonshm``: the command line (``demo``, ``info``, ``ps``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from . import _cli
from ._errors import AnonShmError
from ._hints import join

if TYPE_CHECKING:
    from collections.abc import Sequence
join(globals(), "Sequence")

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, prog: str = "anonshm") -> int:
    """Run the command line (the console script's entry); what anonshm refuses is said.

    Example:
        >>> main(["info"])  # doctest: +ELLIPSIS
        anonshm ...
        0
    """
    try:
        return _cli.main(argv, prog=prog)
    except AnonShmError as exc:  # a refusal, not a bug: a line, not a traceback
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Usage and errors name the command as it was typed; the console script
    # (anonshm.__main__:main) has its own default, "anonshm".
    raise SystemExit(main(prog="python -m anonshm"))
