"""Background prefetching: run an iterator in a thread, a bounded number of items ahead of its consumer.

Used where the producer spends its time outside the GIL (reading memory-mapped shards, copying into pinned memory)
so that the consumer (a training step on the GPU or the CPU) never waits on disk. Items come out in the producer's
order, so results are the same with and without prefetching; an exception in the producer is raised in the consumer
at the item where it happened; closing the consumer (``break``, an exception, garbage collection) stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2, *, name: str = "workbench-prefetch") -> Iterator[T]:
    """Yield ``items`` while a background thread produces up to ``depth`` of them ahead (``depth < 1``: no thread)."""
    if depth < 1:
        yield from items
        return
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
        close = getattr(items, "close", None)
        if callable(close):
            close()
