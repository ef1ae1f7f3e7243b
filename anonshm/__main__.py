"""``python -m anonshm``: the command line (``demo``, ``info``, ``ps``)."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
