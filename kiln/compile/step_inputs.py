"""Step inputs are value ids: an int, None (absent optional input) or a list (variadic input)."""

from __future__ import annotations

from typing import Iterator


def flat_ids(inputs) -> Iterator[int]:
    """The value ids a step reads, in order, with variadic lists flattened and Nones dropped."""
    for x in inputs:
        if isinstance(x, list):
            yield from x
        elif x is not None:
            yield x
