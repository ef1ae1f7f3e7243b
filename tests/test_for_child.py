"""for_child(): the second protocol to a child the application starts by its own means."""

from __future__ import annotations

import subprocess

import pytest

from anonshm import AnonymousMemory, Protection
from tests.conftest import child_env, is_closed, python_child

READER = """
    import sys
    from anonshm import AnonymousMemory
    with AnonymousMemory.from_token(sys.argv[1]) as mem, mem.map() as view:
        print(mem.size, mem.protection.name, view[:5].decode())
        if mem.protection.name == "READ_WRITE":
            view[5:11] = b" world"
"""


@pytest.mark.parametrize("protection", [Protection.READ_WRITE, Protection.READ_ONLY])
def test_the_child_imports_the_token_and_the_duplicate_is_gone_after(
    protection: Protection,
) -> None:
    with AnonymousMemory(4096) as mem:
        with mem.map() as view:
            view[:5] = b"hello"
        source = mem.duplicate(protection=protection)
        with source, source.for_child() as (token, options):
            (passed,) = options["pass_fds"]
            assert token == f"{passed}:{protection.value}"
            assert passed != source.fileno()  # a duplicate for this child alone
            done = subprocess.run(
                python_child(READER, token),
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
                **options,
            )
        assert is_closed(passed)
        assert done.stdout.split() == ["4096", protection.name, "hello"]
        with mem.map(length=11) as view:
            wrote = protection is Protection.READ_WRITE
            expected = b"hello world" if wrote else b"hello" + bytes(6)
            assert view[:11] == expected


def test_a_closed_memory_and_a_block_entered_twice_are_refused() -> None:
    mem = AnonymousMemory(16)
    block = mem.for_child()
    with block:
        with pytest.raises(ValueError, match="already entered"):
            block.__enter__()
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        mem.for_child().__enter__()
