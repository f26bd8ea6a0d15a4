"""The engine's query log keeps the last N queries and counts all of them (ldw.query_log)."""

from __future__ import annotations

import threading

import pytest

import ldw
from ldw.query_log import DEFAULT_LIMIT, QueryLog


def _queries(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [("pg", f"SELECT {i}") for i in range(start, start + n)]


def test_it_reads_like_the_list_it_replaces() -> None:
    log = QueryLog()
    assert log == [] and len(log) == 0 and log.total == 0 and not log
    assert isinstance(log, list) and log.limit == DEFAULT_LIMIT == 10_000
    log.extend(q for q in _queries(3))          # a generator, as the engine passes
    log.append(("my", "SELECT 9"))
    assert len(log) == 4 and log.total == 4
    assert log[-1] == ("my", "SELECT 9") and log[-1][1] == "SELECT 9"
    assert log[0] == ("pg", "SELECT 0") and log[1:3] == _queries(2, 1)
    assert log == [*_queries(3), ("my", "SELECT 9")]
    assert [sql for _, sql in log][:2] == ["SELECT 0", "SELECT 1"]


def test_the_oldest_entries_are_dropped_past_the_limit() -> None:
    log = QueryLog(limit=5)
    log.extend(_queries(3))
    start = len(log)
    log.append(("pg", "SELECT 3"))
    assert len(log) == start + 1
    log.extend(_queries(4, 4))                  # 8 added in all
    assert len(log) == 5 and log.total == 8
    assert log == _queries(5, 3) and log[-1] == ("pg", "SELECT 7")
    log += _queries(12, 8)                      # more than the limit at once
    assert log == _queries(5, 15) and log.total == 20
    assert isinstance(log, QueryLog)
    log.insert(0, ("pg", "first"))
    assert len(log) == 5 and log.total == 21 and ("pg", "first") not in log
    log.clear()
    assert log == [] and log.total == 21        # total counts every entry ever added


def test_initial_entries_are_bounded_and_counted() -> None:
    log = QueryLog(_queries(7), limit=3)
    assert log == _queries(3, 4) and log.total == 7


@pytest.mark.parametrize("limit", [0, -1, 2.5, True, "10"])
def test_a_bad_limit_is_refused(limit: object) -> None:
    with pytest.raises(ldw.ConfigError, match="at least 1 entry"):
        QueryLog(limit=limit)  # type: ignore[arg-type]


def test_concurrent_writers_keep_the_bound_and_the_count() -> None:
    log = QueryLog(limit=100)

    def write() -> None:
        for i in range(500):
            log.extend(_queries(2, i))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(log) == 100 and log.total == 4 * 500 * 2
