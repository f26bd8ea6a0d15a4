"""The engine's log of SQL sent to sources, bounded so a long-running server does not grow it.

A ``list`` of ``(source alias, SQL)`` pairs, newest last, that keeps only the last ``limit``
entries (the oldest are dropped) and counts in ``total`` every entry ever added. Being a list,
it keeps what readers of ``Engine.query_log`` rely on: ``len``, indexing (``log[-1]``),
slicing, iteration and ``log == []``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import SupportsIndex

from ldw.errors import ConfigError

__all__ = ["DEFAULT_LIMIT", "QueryLog"]

DEFAULT_LIMIT = 10_000

Entry = tuple[str, str]  # (source alias, SQL sent)


class QueryLog(list[Entry]):
    """The last ``limit`` queries sent to sources; ``total`` counts all of them."""

    def __init__(self, entries: Iterable[Entry] = (), *, limit: int = DEFAULT_LIMIT) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ConfigError(f"a query log keeps at least 1 entry; got limit={limit!r}")
        super().__init__()
        self.limit = limit
        self.total = 0
        self._lock = threading.Lock()  # the engine logs from several request threads
        self.extend(entries)

    def append(self, entry: Entry) -> None:
        self.extend((entry,))

    def extend(self, entries: Iterable[Entry]) -> None:
        new = list(entries)  # a generator is read once, outside the lock
        with self._lock:
            super().extend(new)
            self.total += len(new)
            self._trim()

    def __iadd__(self, entries: Iterable[Entry]) -> QueryLog:
        self.extend(entries)
        return self

    def insert(self, index: SupportsIndex, entry: Entry) -> None:
        with self._lock:
            super().insert(index, entry)
            self.total += 1
            self._trim()

    def _trim(self) -> None:
        excess = len(self) - self.limit
        if excess > 0:
            del self[:excess]
