"""Embeddings: a second llama.cpp context over the same weights, in embedding mode."""

from __future__ import annotations

import contextlib

import numpy as np

from inference.engine.spec import ModelSpec


class Embedder:
    """Engine thread only. Opened on first use; each run() is one llama_decode."""

    def __init__(self, spec: ModelSpec, n_embd: int) -> None:
        self._spec = spec
        self._n_embd = n_embd
        self._llm = None

    def _open(self):
        if self._llm is None:
            from llama_cpp import Llama, llama_cpp

            # Mean pooling; generation and embedding outputs are configured
            # differently, hence a context of its own.
            spec = self._spec
            self._llm = Llama(
                model_path=str(spec.path),
                n_ctx=spec.n_ctx,
                n_batch=spec.n_ctx,
                n_ubatch=spec.n_ctx,
                n_threads=spec.n_threads,
                n_threads_batch=spec.n_threads,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        return self._llm

    def limits(self) -> tuple[int, int]:
        """(tokens, sequences) one run() may take."""
        llm = self._open()
        return llm.n_batch, llm.context_params.n_seq_max

    def run(self, batch: list[list[int]]) -> list[list[float]]:
        """One normalised vector per input, from one decode."""
        from llama_cpp import llama_cpp

        emb = self._open()
        emb._batch.reset()
        for seq_id, tokens in enumerate(batch):
            emb._batch.add_sequence(tokens, seq_id, True)
        emb._ctx.kv_cache_clear()
        try:
            emb._ctx.decode(emb._batch)
            vectors = []
            for seq_id in range(len(batch)):
                ptr = llama_cpp.llama_get_embeddings_seq(emb._ctx.ctx, seq_id)
                vec = np.array(ptr[: self._n_embd], dtype=np.float64)
                norm = np.linalg.norm(vec)
                vectors.append((vec / norm if norm > 0 else vec).tolist())
        finally:
            emb._batch.reset()
            emb._ctx.kv_cache_clear()
        return vectors

    def close(self) -> None:
        if self._llm is not None:
            with contextlib.suppress(Exception):
                self._llm.close()
            self._llm = None
