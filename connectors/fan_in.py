"""Run several batch producers in threads and yield their batches in arrival order.

The queue is bounded, so memory holds at most a few batches per producer whatever the table
size. An error in any producer stops the others and is re-raised in the consumer; a consumer
that stops early (or is interrupted) sets ``cancel`` so the producers cancel their queries.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import pyarrow as pa

__all__ = ["fan_in"]

_DONE = object()


def fan_in(producers: list[Callable[[], Iterator[pa.RecordBatch]]],
           cancel: threading.Event) -> Iterator[pa.RecordBatch]:
    if len(producers) == 1:
        yield from producers[0]()
        return
    slots: queue.Queue = queue.Queue(maxsize=2 * len(producers))

    def put(item: object) -> bool:
        while not cancel.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(produce: Callable[[], Iterator[pa.RecordBatch]]) -> None:
        try:
            for batch in produce():
                if not put(batch):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)
            return
        put(_DONE)

    threads = [threading.Thread(target=run, args=(p,), daemon=True, name=f"ldw-read-{i}")
               for i, p in enumerate(producers)]
    for thread in threads:
        thread.start()
    remaining = len(threads)
    try:
        while remaining:
            item = slots.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        if remaining:
            cancel.set()
        for thread in threads:
            thread.join(timeout=30)
