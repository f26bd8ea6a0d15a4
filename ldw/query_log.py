"""A bounded log of the SQL sent to sources: the newest entries, and how many there ever were."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["QueryLog"]


class QueryLog(list[tuple[str, str]]):
    """``(source alias, SQL sent)`` pairs, newest last, at most ``limit`` kept (oldest dropped);
    ``total`` counts every entry ever added."""

    def __init__(self, limit: int = 10_000) -> None:
        super().__init__()
        self.limit = limit
        self.total = 0

    def append(self, entry: tuple[str, str]) -> None:
        self.extend((entry,))

    def extend(self, entries: Iterable[tuple[str, str]]) -> None:
        entries = list(entries)
        self.total += len(entries)
        super().extend(entries)
        if len(self) > self.limit:
            del self[:len(self) - self.limit]
