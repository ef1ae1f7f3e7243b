"""``python -m anonshm``: the command line (``demo``, ``info``, ``ps``)."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    # Usage and errors name the command as it was typed; the console script
    # (anonshm.__main__:main) calls main() with its own default, "anonshm".
    raise SystemExit(main(prog="python -m anonshm"))
