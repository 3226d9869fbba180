"""A job's handle: the engine pushes events into it, the caller iterates or cancels it."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator

from inference.engine.events import EmbeddingResult, Finished


class Handle:
    """Where a job's events arrive. Iterate it (async or sync), or cancel it.

    Events are buffered under a lock; an async consumer parks on a future of
    whatever loop it iterates from (which need not be the loop that submitted
    the job: a streamed response is often consumed by another task or loop).
    """

    def __init__(self) -> None:
        self._events: deque[object] = deque()
        self._cond = threading.Condition()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self._cancelled = threading.Event()
        self.started = threading.Event()

    # -- engine side ------------------------------------------------------
    def emit(self, event: object, deferred: list | None = None) -> None:
        """Queue an event and wake the consumer; with `deferred`, leave the wake-up there.

        The engine defers the wake-ups of one step's tokens and sends them with
        wake_all(): one call into each event loop per step, not one per token.
        """
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if deferred is not None:
            deferred.append((self, waiter))
        else:
            wake_all([(self, waiter)])

    # -- caller side ------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def __aiter__(self) -> AsyncIterator[object]:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._events:
                    event = self._events.popleft()
                    future = None
                else:
                    future = loop.create_future()
                    self._waiter = (loop, future)
            if future is not None:
                await future
                continue
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished | EmbeddingResult):
                return

    def __iter__(self) -> Iterator[object]:
        while True:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                event = self._events.popleft()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished | EmbeddingResult):
                return


_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future]


def wake_all(waiters: list[tuple[Handle, _Waiter]]) -> None:
    """Wake parked consumers: one call_soon_threadsafe per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Handle, asyncio.Future]]] = {}
    for handle, (loop, future) in waiters:
        by_loop.setdefault(loop, []).append((handle, future))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_wake, [future for _, future in items])
        except RuntimeError:
            # That loop is closed: nobody will read further events.
            for handle, _ in items:
                handle.cancel()


def _wake(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
