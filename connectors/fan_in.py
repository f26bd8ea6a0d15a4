"""Run batch producers on worker threads; the calling thread only waits for their batches.

Every driver call that may block (connect, execute, fetch the next batch) runs on a worker thread,
so the calling thread always waits on a bounded queue, which a signal interrupts at once: a
KeyboardInterrupt (Jupyter's "interrupt kernel" is SIGINT to the main thread) is acted on
promptly, wherever the driver is, instead of after the driver's current batch. The queue holds one
batch per producer, so memory holds at most a few batches per producer whatever the table size.

When the consumer stops early (a KeyboardInterrupt while waiting, an error, or closing the
generator, e.g. after an interrupt in the writer), the read is cancelled: ``cancel`` is set, the
driver cancel hooks the producers registered with :meth:`Interrupt.hook` are called from the
consumer's thread (ADBC ``adbc_cancel``, psycopg ``cancel_safe``), and if the producers are still
running after a grace period (or the driver has no cancel) the connector's ``fallback`` runs on a
thread of its own (cancel by the read's tag on another connection: ``pg_cancel_backend``,
``KILL QUERY``). The consumer then waits a little for the producers and re-raises; a producer
still stuck in its driver finishes on its own (its threads are daemons). An error in any
producer stops the others the same way and is re-raised in the consumer. ``cancel`` set by someone
else while the consumer waits raises :class:`ldw.Cancelled`.

ConnectorX is the exception to "at once": it holds the GIL while it waits for its next batch, so
an interrupt is acted on when that batch arrives (see ``MySQLConnector._read``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import pyarrow as pa

from ldw.errors import Cancelled

__all__ = ["Interrupt", "fan_in"]

log = logging.getLogger("ldw.connectors")

_DONE = object()
POLL = 0.1  # seconds between checks of ``cancel`` while the consumer waits for a batch
GRACE = 0.5  # seconds the drivers' own cancel gets before the fallback (cancel by tag) runs
SETTLE = 3.0  # seconds the consumer waits for cancelled producers to finish before it returns


class Interrupt:
    """One read's cancellation: the engine's ``cancel`` event plus the cancel hooks of the
    driver calls in flight, which the consumer's thread calls when the read is cancelled."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self._hooks: dict[int, Callable[[], object]] = {}
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @contextlib.contextmanager
    def hook(self, cancel: Callable[[], object]) -> Iterator[None]:
        """While the block runs, cancelling the read calls ``cancel`` (a thread-safe driver
        cancel); leaving the block waits for a call in progress, so the driver object the hook
        uses may be closed right after."""
        key = id(cancel)
        with self._lock:
            self._hooks[key] = cancel
        try:
            yield
        finally:
            with self._lock:
                self._hooks.pop(key, None)

    def fire(self) -> bool:
        """Set the event and call every hook; whether a driver accepted the cancel request."""
        self.event.set()
        accepted = False
        with self._lock:
            for cancel in list(self._hooks.values()):
                try:
                    cancel()
                    accepted = True
                except Exception as exc:  # e.g. NOT_IMPLEMENTED (ADBC SQLite), already closed
                    log.debug("driver cancel failed: %s", exc)
        return accepted


Producer = Callable[[Interrupt], Iterator[pa.RecordBatch]]


def fan_in(producers: list[Producer], cancel: threading.Event, *,
           fallback: Callable[[], None] | None = None, timeout: float | None = None,
           on_timeout: Callable[[], BaseException] | None = None) -> Iterator[pa.RecordBatch]:
    """Yield the batches of every producer, in arrival order, each producer on its own thread.

    ``fallback`` cancels the read's queries on the source by other means (by tag, on a
    connection of its own) when the drivers' cancel hooks did not stop the producers.
    ``timeout`` bounds how long the consumer waits without any batch arriving (the source holds
    a lock, or its process is stopped): the read is then cancelled like an interrupt and the
    error ``on_timeout()`` builds is raised.
    """
    interrupt = Interrupt(cancel)
    slots: queue.Queue = queue.Queue(maxsize=len(producers))

    def put(item: object) -> bool:
        while not cancel.is_set():
            try:
                slots.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def run(produce: Producer) -> None:
        try:
            with contextlib.closing(produce(interrupt)) as batches:
                for batch in batches:
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
    last_progress = time.monotonic()
    try:
        while remaining:
            try:
                item = slots.get(timeout=POLL)
            except queue.Empty:
                if cancel.is_set():
                    raise Cancelled("the read was cancelled; the source query was "
                                    "cancelled") from None
                if timeout is not None and time.monotonic() - last_progress > timeout:
                    raise (on_timeout() if on_timeout else TimeoutError(
                        f"no batch from the source in {timeout:g} s")) from None
                continue
            last_progress = time.monotonic()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                remaining -= 1  # that producer has stopped; cancel the others
                raise item
            else:
                yield item
    finally:
        if remaining:
            _stop(threads, interrupt, fallback)
        else:
            for thread in threads:
                thread.join()


def _stop(threads: list[threading.Thread], interrupt: Interrupt,
          fallback: Callable[[], None] | None) -> None:
    """Cancel the producers' queries and wait briefly for their threads."""
    accepted = interrupt.fire()
    if fallback is not None:
        if accepted and _join(threads, GRACE):
            return
        # On a thread of its own: a source that stopped answering must not hold the caller.
        threading.Thread(target=_best_effort, args=(fallback,), daemon=True,
                         name="ldw-cancel").start()
        accepted = True
    if not _join(threads, SETTLE if accepted else POLL):
        log.info("a cancelled source read is still finishing in the background")


def _best_effort(fallback: Callable[[], None]) -> None:
    try:
        fallback()
    except Exception as exc:  # the source may be gone
        log.debug("cancelling by tag failed: %s", exc)


def _join(threads: list[threading.Thread], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)
