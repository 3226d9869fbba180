"""The engine context's KV cells, by llama.cpp sequence id. Engine thread only."""

from __future__ import annotations

import ctypes


class KVCells:
    def __init__(self, lib, ctx) -> None:
        self._lib = lib
        self._ctx = ctx
        self.mem = lib.llama_get_memory(ctx)
        self._buffer = (ctypes.c_uint8 * 0)()

    def clear(self, seq_id: int) -> None:
        self._lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)

    def truncate(self, seq_id: int, n: int) -> bool:
        """Keep the first `n` positions of `seq_id`."""
        return bool(self._lib.llama_memory_seq_rm(self.mem, seq_id, n, -1))

    def cells(self, seq_id: int) -> int:
        return self._lib.llama_memory_seq_pos_max(self.mem, seq_id) + 1

    def pos_min(self, seq_id: int) -> int:
        return self._lib.llama_memory_seq_pos_min(self.mem, seq_id)

    def copy(self, src: int, dst: int) -> bool:
        """Give the empty sequence `dst` a copy of the cells of `src`; False if it failed.

        Between separate KV streams, llama_memory_seq_cp copies the whole stream,
        every cell of n_ctx in every layer (about 20 ms at 4096 here) however few
        cells the sequence uses. llama.cpp's sequence state holds only the cells in
        use, so a trip through it costs in proportion to them (under 1 ms for a
        140-token sequence).
        """
        lib, ctx = self._lib, self._ctx
        size = lib.llama_state_seq_get_size(ctx, src)
        if len(self._buffer) < size:
            self._buffer = (ctypes.c_uint8 * max(size, 2 * len(self._buffer)))()
        buffer = self._buffer
        written = lib.llama_state_seq_get_data(ctx, buffer, size, src)
        if written == 0 or lib.llama_state_seq_set_data(ctx, buffer, written, dst) != written:
            self.clear(dst)
            return False
        return True
