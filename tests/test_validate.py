"""_validate: what a descriptor handed over must be; macOS's page-rounded sizes."""

from __future__ import annotations

import mmap

import pytest

from anonshm import TokenError, _validate
from anonshm._backend import Inspected

PAGE = mmap.PAGESIZE


def _memory(size: int) -> Inspected:
    return Inspected(
        None, named=False, size=size, access="rw", fixed_size=False, frozen=False, revocable=False
    )


@pytest.mark.parametrize("rounds", [False, True], ids=["exact", "macos-rounds"])
def test_an_announced_size_must_match_unless_the_kernel_rounds_it_up_to_pages(
    rounds: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # macOS's fstat of a shared memory object gives its size rounded up to whole pages:
    # there, the sender's exact size is the memory's; anything else is refused.
    monkeypatch.setattr(_validate, "ROUNDS_SIZES", rounds)
    seen = _memory(2 * PAGE)
    announced = PAGE + 10
    if rounds:
        _validate.check(seen, None, TokenError, "m", size=announced)
        assert _validate.exact_size(seen, announced) == announced
    else:
        with pytest.raises(TokenError, match="were announced"):
            _validate.check(seen, None, TokenError, "m", size=announced)
        assert _validate.exact_size(seen, announced) == 2 * PAGE
    for wrong in (PAGE, 2 * PAGE + 1, 3 * PAGE):  # rounds to another size, or is bigger
        with pytest.raises(TokenError, match="were announced"):
            _validate.check(seen, None, TokenError, "m", size=wrong)
        assert _validate.exact_size(seen, wrong) == 2 * PAGE
    assert _validate.exact_size(seen, None) == 2 * PAGE  # nothing announced: what is seen
