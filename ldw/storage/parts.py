"""Versions made of several files: how their rows are put together, without a copy.

An incremental refresh makes a version from the files of the one it continues (shared, never
copied) and one more file with the new rows; an upsert also leaves out the old rows whose keys
came again. A version's table is its files' record batches in order, cut to the row ranges it
keeps (``keep``: ``(start, length)`` pairs over all its files' rows, ascending): zero-copy
slices of the memory-mapped batches, so ``to_polars()`` and DuckDB read the mapped pages.

A slice of a ``string_view`` column still points into all of its batch's string data, and an
Arrow IPC writer writes all of it for every slice; whoever writes a version's batches as IPC
(compaction, spill, a Flight stream) passes them through :func:`standalone` first.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

__all__ = ["Keep", "MAX_RANGES", "assemble", "drop_rows", "kept_rows", "open_fd", "open_fds",
           "standalone", "valid_keep"]

Keep = tuple[tuple[int, int], ...]

MAX_RANGES = 10_000  # row ranges a version may keep before it is written out whole


def open_fd(fd: int) -> pa.Table:
    """Memory-map an open version file (e.g. a descriptor received from the server)."""
    mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    return ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).read_all()


def open_fds(fds: Sequence[int], keep: Keep | None = None) -> pa.Table:
    """Memory-map a version's open files, in order, and keep the rows it holds."""
    return assemble([open_fd(fd) for fd in fds], keep)


def assemble(tables: Sequence[pa.Table], keep: Keep | None) -> pa.Table:
    """One table of ``tables``' rows in order, only ``keep``'s ranges (None: all)."""
    schema = tables[0].schema
    batches = [batch for table in tables for batch in table.to_batches()]
    if keep is not None:
        batches = _slices(batches, keep)
    return pa.Table.from_batches(batches, schema=schema)


def _slices(batches: list[pa.RecordBatch], keep: Keep) -> list[pa.RecordBatch]:
    bounds = np.cumsum([0, *(b.num_rows for b in batches)]).tolist()
    out, at = [], 0
    for start, length in keep:
        end = start + length
        while start < end:
            while bounds[at + 1] <= start:
                at += 1
            stop = min(end, bounds[at + 1])
            out.append(batches[at].slice(start - bounds[at], stop - start))
            start = stop
    return out


_PLAIN = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}


def standalone(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` whose view columns hold only their own strings (a copy of those columns if
    it is a small slice of a larger batch); other batches as they are."""
    columns = None
    for index, column in enumerate(batch.columns):
        plain = _PLAIN.get(column.type)
        views = column.buffers()[1] if plain is not None else None
        if views is not None and len(column.buffers()) > 2 and 2 * len(column) < views.size // 16:
            columns = columns or list(batch.columns)
            columns[index] = column.cast(plain).cast(column.type)
    return batch if columns is None else pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def kept_rows(keep: Keep | None, total: int) -> int:
    """How many rows a version keeps of its files' ``total``."""
    return total if keep is None else sum(length for _, length in keep)


def valid_keep(keep: Keep, total: int) -> bool:
    """Whether ``keep`` is ascending, disjoint, non-empty ranges within ``total`` rows."""
    end = 0
    for start, length in keep:
        if start < end or length <= 0:
            return False
        end = start + length
    return end <= total


def drop_rows(keep: Keep | None, total: int, dropped: pa.Array | pa.ChunkedArray) -> Keep:
    """``keep`` (over ``total`` file rows) without the rows at positions ``dropped`` of the
    version's table (ascending, unique)."""
    ranges = np.array(keep if keep is not None else ((0, total),), dtype=np.int64)
    starts, lengths = ranges[:, 0], ranges[:, 1]
    positions = np.asarray(dropped.to_numpy() if isinstance(dropped, pa.Array)
                           else pc.cast(dropped, pa.int64()).to_numpy(), dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # table position of each range
    at = np.searchsorted(first, positions, side="right") - 1
    rows = starts[at] + positions - first[at]  # the file rows to leave out
    # each range [s, e) with dropped rows p1 < ... < pk becomes [s, p1), [p1+1, p2) ... [pk+1, e)
    new_starts = np.sort(np.concatenate([starts, rows + 1]))
    new_ends = np.sort(np.concatenate([starts + lengths, rows]))
    wanted = new_ends > new_starts
    return tuple(zip(new_starts[wanted].tolist(), (new_ends - new_starts)[wanted].tolist(),
                     strict=True))
