"""``python -m anonshm ps`` (being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def main(args: argparse.Namespace) -> int:
    """Print the anonymous memories held by this user's processes."""
    raise NotImplementedError("ps")
