"""Async streaming over the engine's sync streams without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


async def iterate_in_thread(make_iterator: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a sync iterator to completion in ONE worker thread and hand its items to the loop.

    The engine holds its lock across a stream's steps, so the whole stream must stay on one
    thread (an executor would resume it on arbitrary threads); the loop never blocks on it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    done = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancelled.set()

    def produce() -> None:
        iterator = None
        try:
            iterator = make_iterator()
            for item in iterator:
                if cancelled.is_set():
                    break
                put((item, None))
            put((done, None))
        except BaseException as e:  # handed to the consumer, re-raised there
            put((done, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # releases the engine's lock when the consumer stopped early

    context = contextvars.copy_context()  # callbacks and tracing see the caller's context
    threading.Thread(target=context.run, args=(produce,), name="lorauter-stream", daemon=True).start()
    try:
        while True:
            item, error = await queue.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        cancelled.set()
