"""A source's connection limit: one first-come-first-served queue per source.

A source is shared infrastructure: ldw opens at most ``[sources.NAME] max_connections``
connections to it at once, whoever asks (reads, partitions, snapshots, probes, reflection, every
user). Each physical connection holds a slot from the moment it is opened until it is closed.

A read that needs several connections at once (a snapshot plus its partitions) takes them
together as a :class:`Lease`, at least ``need`` and up to ``want``, so two reads can never each
hold part of what they need and wait for each other. The connections the read opens then draw
from its lease (found through a context variable, which the read's worker threads are given);
partitions beyond the lease wait for an earlier partition's connection. A connection opened
outside any lease takes one slot on its own.

Waiting for slots honours the source's ``timeout`` (``SourceTimeout`` naming
``max_connections``) and a read's cancellation (``Cancelled``).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from ldw.config import SourceConfig
from ldw.errors import Cancelled, InvalidMapping, SourceTimeout

__all__ = ["ConnectionSlots", "Lease", "current_lease", "uncounted"]

POLL = 0.1  # seconds between checks of a waiter's cancellation and deadline

_LEASE: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("ldw_lease", default=None)
_UNCOUNTED: contextvars.ContextVar[bool] = contextvars.ContextVar("ldw_uncounted", default=False)


def current_lease() -> Lease | None:
    """The lease of the read running in this context, if any."""
    return _LEASE.get()


@contextlib.contextmanager
def uncounted() -> Iterator[None]:
    """Connections opened in this block take no slot: only for cancelling the source queries
    of reads that hold every slot (a cancel must never wait behind what it cancels)."""
    token = _UNCOUNTED.set(True)
    try:
        yield
    finally:
        _UNCOUNTED.reset(token)


def _once(release: Callable[[], None]) -> Callable[[], None]:
    done = threading.Lock()

    def once() -> None:
        if done.acquire(blocking=False):
            release()
    return once


class ConnectionSlots:
    """At most ``source.max_connections`` connections to one source, first come first served."""

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self.limit = source.max_connections
        self._free = self.limit
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self.limit - self._free

    def _take(self, need: int, want: int, *, cancel: threading.Event | None = None) -> int:
        """Wait for ``need`` free slots (in arrival order) and take up to ``want`` of them."""
        if need > self.limit:
            raise InvalidMapping(
                f"a read of source {self.source.name!r} needs {need} connections at once, more "
                f"than its [sources.{self.source.name}] max_connections = {self.limit}; use "
                f"fewer partitions or raise max_connections")
        timeout = self.source.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                while self._queue[0] is not me or self._free < need:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("the read was cancelled while waiting for a connection "
                                        f"to source {self.source.name!r}")
                    if deadline is not None and time.monotonic() >= deadline:
                        raise self._timeout_error()
                    self._cond.wait(POLL)
                granted = min(self._free, max(want, need))
                self._free -= granted
                return granted
            finally:
                self._queue.remove(me)
                self._cond.notify_all()

    def _give(self, count: int) -> None:
        if count:
            with self._cond:
                self._free += count
                self._cond.notify_all()

    def _timeout_error(self) -> SourceTimeout:
        name = self.source.name
        return SourceTimeout(
            f"source {name!r}: no connection became free within its timeout "
            f"({self.source.timeout:g} s); all [sources.{name}] max_connections = {self.limit} "
            f"are in use by other reads. Retry later, or raise [sources.{name}] max_connections "
            f"or timeout")

    def one(self) -> Callable[[], None]:
        """Take a slot for one connection about to be opened; returns its release (call it once
        the connection is closed). Inside a read's lease the slot comes from the lease."""
        if _UNCOUNTED.get():
            return lambda: None
        lease = _LEASE.get()
        if lease is not None and lease.slots is self:
            return lease.take(1)
        self._take(1, 1)
        return _once(lambda: self._give(1))

    @contextlib.contextmanager
    def lease(self, need: int, want: int, *,
              cancel: threading.Event | None = None) -> Iterator[Lease]:
        """Slots for one read (at least ``need``, up to ``want``), current in this context
        (not for use inside a generator: a context variable set there leaks to its caller).
        Inside another lease of this source, that lease serves."""
        outer = _LEASE.get()
        if outer is not None and outer.slots is self:
            yield outer
            return
        held = self.new_lease(need, want, cancel=cancel)
        token = _LEASE.set(held)
        try:
            yield held
        finally:
            _LEASE.reset(token)
            held.close()

    def new_lease(self, need: int, want: int, *,
                  cancel: threading.Event | None = None) -> Lease:
        """A lease that is not made current; its holder hands it to worker threads
        (:meth:`Lease.enter`) and closes it."""
        return Lease(self, self._take(need, want, cancel=cancel))


class Lease:
    """Slots a read holds; the connections it opens take them in turn."""

    def __init__(self, slots: ConnectionSlots, granted: int) -> None:
        self.slots = slots
        self.granted = granted
        self._free = granted
        self._closed = False
        self._cond = threading.Condition()

    def take(self, count: int = 1) -> Callable[[], None]:
        """Wait for ``count`` of the lease's slots (an earlier connection of the read closing);
        returns their release."""
        if count > self.granted:
            name = self.slots.source.name
            raise InvalidMapping(
                f"a read of source {name!r} needs {count} connections at once but holds "
                f"{self.granted} ([sources.{name}] max_connections = {self.slots.limit}); "
                "use fewer partitions or raise max_connections")
        with self._cond:
            while self._free < count and not self._closed:
                self._cond.wait(POLL)
            if self._closed:
                raise Cancelled("the read ended while waiting for a connection")
            self._free -= count
        return _once(lambda: self._give(count))

    def _give(self, count: int) -> None:
        with self._cond:
            if not self._closed:
                self._free += count
                self._cond.notify_all()
                return
        self.slots._give(count)  # the read is over: straight back to the source's queue

    def close(self) -> None:
        """Return the unused slots now; slots still in use return when their connections
        close."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            unused, self._free = self._free, 0
            self._cond.notify_all()
        self.slots._give(unused)

    def enter(self) -> None:
        """Make this lease current in the calling thread (a read's worker thread)."""
        _LEASE.set(self)
