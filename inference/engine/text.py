"""Token and text helpers of the scheduler: shared prefixes and stop strings."""

from __future__ import annotations

import numpy as np


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n])
    y = np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n


def split_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, str | None]:
    """Split `text` into (safe to emit, withheld, the stop string found or None).

    Of stop strings found, the one that begins first ends the text; of those
    beginning at the same place, the shortest (fed a character at a time, it
    would have matched first)."""
    if not stops:
        return text, "", None
    found = [(i, len(stop), stop) for stop in stops if (i := text.find(stop)) >= 0]
    if found:
        cut, _, stop = min(found)
        return text[:cut], "", stop
    # Withhold the longest suffix that could still grow into a stop string.
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    if keep:
        return text[:-keep], text[-keep:], None
    return text, "", None
