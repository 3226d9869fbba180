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


def split_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split `text` into (safe to emit, withheld, stop string found)."""
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    # Withhold the longest suffix that could still grow into a stop string.
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    if keep:
        return text[:-keep], text[-keep:], False
    return text, "", False
