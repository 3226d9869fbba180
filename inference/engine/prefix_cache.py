"""Finished sequences' KV cells, kept (bounded, LRU) for later prompts that begin the same way.

Each entry is a llama.cpp sequence id of its own above the decoding slots. A new
prompt copies the entry sharing its longest prefix instead of evaluating it again;
an exact repeat also takes the logits that followed the prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from inference.engine.kv import KVCells
from inference.engine.text import common_prefix

# A finished sequence shorter than this is not worth a prefix cache slot.
MIN_PREFIX = 8
# Copying a cached entry costs per cell it holds (the whole entry is copied,
# then cut at the shared prefix); prefilling a prompt token costs about as much
# as copying 600 cells here (3 ms against 5 us). A shared prefix is reused when
# the copy is cheaper by this margin: any prefix of a short entry (the common
# case: a prompt template's first words), only a long prefix of a long one.
CELLS_PER_TOKEN = 256


@dataclass(eq=False)
class CacheEntry:
    seq_id: int
    tokens: list[int]
    prompt_len: int = 0  # tokens[:prompt_len] was a prompt, and `logits` came after it
    logits: np.ndarray | None = None


class PrefixCache:
    """Engine thread only. `copy(src, dst)` copies a sequence's cells (the engine's, so
    that its accounting and failure handling apply); `counters` is the engine's."""

    def __init__(
        self,
        kv: KVCells,
        seq_ids: list[int],
        *,
        copy: Callable[[int, int], bool],
        n_swa: int,
        counters: dict[str, int],
    ) -> None:
        self._kv = kv
        self._copy = copy
        self._n_swa = n_swa
        self._counters = counters
        self.free_ids = list(seq_ids)
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # LRU first

    def __len__(self) -> int:
        return len(self._entries)

    def seq_ids(self) -> Iterator[int]:
        return iter(self._entries)

    def reuse(self, prompt: list[int], seq_id: int) -> tuple[int, np.ndarray | None] | None:
        """Start the empty sequence `seq_id` from the entry sharing the longest prefix with
        `prompt`: (positions now in its cells, the kept logits on an exact repeat), or None.

        An exact repeat of a cached prompt takes all its cells and the logits that
        followed them: nothing is evaluated, and the first token is sampled from
        the same numbers as the first time (greedy gives the same text).
        """
        best, best_len, exact = None, 0, False
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, prompt)
            hit = n == len(prompt) == entry.prompt_len and entry.logits is not None
            if (hit, n) > (exact, best_len) or (
                (hit, n) == (exact, best_len) and best and len(entry.tokens) < len(best.tokens)
            ):
                best, best_len, exact = entry, n, hit
        # Otherwise at least the last prompt token is evaluated: its logits pick
        # the first token.
        reuse = best_len if exact else min(best_len, len(prompt) - 1)
        if (
            best is None
            or reuse < 1
            or len(best.tokens) > reuse * CELLS_PER_TOKEN
            or not self._window_intact(best, reuse)
        ):
            self._counters["prefix_cache_misses"] += 1
            return None
        if not self._copy(best.seq_id, seq_id) or not self._kv.truncate(seq_id, reuse):
            self._kv.clear(seq_id)
            self._counters["prefix_cache_misses"] += 1
            return None
        self._entries.move_to_end(best.seq_id)
        self._counters["prefix_cache_hits"] += 1
        self._counters["prompt_tokens_reused"] += reuse
        # The logits are read only: shared with the entry.
        return reuse, best.logits if exact else None

    def _window_intact(self, entry: CacheEntry, reuse: int) -> bool:
        # A sliding-window layer keeps only the last n_swa positions of a
        # sequence: continuing at `reuse` needs the window before it.
        if self._n_swa <= 0:
            return True
        return self._kv.pos_min(entry.seq_id) <= max(0, reuse - self._n_swa)

    def store(
        self, seq_id: int, tokens: list[int], prompt_len: int, logits: np.ndarray | None
    ) -> None:
        """Keep a finished slot's cells as an entry (a copy of its stream)."""
        for entry in self._entries.values():
            covered = common_prefix(entry.tokens, tokens) == len(tokens)
            if covered and (
                logits is None or (entry.logits is not None and entry.prompt_len == prompt_len)
            ):
                # An entry already holds these cells and this prompt's logits
                # (an exact repeat that generated the same tokens, or fewer).
                self._entries.move_to_end(entry.seq_id)
                return
        for entry in list(self._entries.values()):
            if common_prefix(entry.tokens, tokens) == len(entry.tokens):
                # The new entry covers the old one.
                del self._entries[entry.seq_id]
                self._kv.clear(entry.seq_id)
                self.free_ids.append(entry.seq_id)
        if not self.free_ids:
            self._evict()
        cache_id = self.free_ids.pop()
        if self._copy(seq_id, cache_id):
            self._entries[cache_id] = CacheEntry(cache_id, tokens, prompt_len, logits)
        else:
            self.free_ids.append(cache_id)

    def _evict(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self._kv.clear(entry.seq_id)
        self.free_ids.append(entry.seq_id)
