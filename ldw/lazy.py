"""Lazy polars frames over datasets: a polars IO plugin with pushdown into the source SQL.

While a dataset is uncached, polars hands the plugin the columns it needs, a predicate and a row
limit. The columns and the limit go into the source query; the conjuncts of the predicate that
translate into ldw's predicate format (:mod:`ldw.pushdown`) go there too, and the *whole*
predicate is applied again to every batch (polars trusts a plugin to apply it). Once cached, the
frame scans the memory-mapped version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import polars as pl
from polars.io.plugins import register_io_source

__all__ = ["scan_dataset"]


def scan_dataset(name: str, schema: pl.Schema, *, is_cached: Callable[[], bool],
                 scan_cached: Callable[[], pl.LazyFrame],
                 scan_source: Callable[[list[str] | None, pl.Expr | None, int | None],
                                       Iterator[pl.DataFrame]]) -> pl.LazyFrame:
    """A LazyFrame that reads the cache when the dataset is cached, else the source."""

    def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               batch_size: int | None) -> Iterator[pl.DataFrame]:
        if is_cached():
            frame = scan_cached()
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            if n_rows is not None:
                frame = frame.head(n_rows)
            yield frame.collect()
            return
        left = n_rows
        for frame in scan_source(with_columns, predicate, n_rows):
            if predicate is not None:
                frame = frame.filter(predicate)
            if left is not None:
                frame = frame.head(left)
                left -= frame.height
            yield frame
            if left == 0:
                return

    return register_io_source(source, schema=schema, explain_name=f"ldw:{name}")
