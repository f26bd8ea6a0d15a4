"""Decimal columns at 16-byte offsets in a cached version, so polars maps them without a copy.

polars holds decimals as 128-bit integers and imports an Arrow ``decimal128`` buffer zero-copy
only when it starts at a 16-byte boundary; the Arrow IPC writer pads buffers to 8 bytes, so about
half of the batches of a version came out misaligned and ``to_polars()`` copied them. Before each
batch is written, :class:`DecimalAligner` works out where the batch's decimal buffers will land
in the file (the writer's body layout, and its metadata size measured on a byte-counting stream)
and, if that is off by 8, adds a few bytes of batch metadata (``ldw_pad``) to move the body by 8.
Readers ignore that metadata. Decimals separated by buffers of an odd number of 8-byte units
cannot all be aligned by one shift: the most are, and the rest are copied as before.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyarrow import ipc

__all__ = ["DecimalAligner"]

_PADS: list[dict[str, str] | None] = [None, {"ldw_pad": "x"}, {"ldw_pad": "xxxxx"},
                                      {"ldw_pad": "xxxxxxxxx"}, {"ldw_pad": "x" * 13}]


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _offset_span(array: pa.Array, width: int) -> int:
    """Bytes of value data a string/binary array uses (its last offset minus its first)."""
    import numpy as np

    kind = np.int32 if width == 4 else np.int64
    offsets = np.frombuffer(array.buffers()[1], kind, len(array) + 1, array.offset * width)
    return int(offsets[-1] - offsets[0])


def _layout(array: pa.Array, at: int, decimals: list[int]) -> int | None:
    """Where the IPC writer puts ``array``'s buffers from body offset ``at``: records the
    offsets of decimal value buffers; returns the offset after it (None: a type not modelled)."""
    t, n = array.type, len(array)
    at += _pad8(0 if array.null_count == 0 else (n + 7) // 8)
    if pa.types.is_decimal(t):
        decimals.append(at)
        return at + _pad8(n * t.byte_width)
    if pa.types.is_boolean(t):
        return at + _pad8((n + 7) // 8)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t):
        return at + _pad8(n * t.bit_width // 8)
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        at += _pad8(n * 16)
        return at + sum(_pad8(b.size if b is not None else 0) for b in array.buffers()[2:])
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return at + _pad8((n + 1) * 4) + _pad8(_offset_span(array, 4))
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return at + _pad8((n + 1) * 8) + _pad8(_offset_span(array, 8))
    return None


class DecimalAligner:
    """Chooses each batch's ``custom_metadata`` for ``writer.write_batch`` so its decimal
    buffers start at 16-byte file offsets (see the module docstring)."""

    def __init__(self, sink: Any, schema: pa.Schema) -> None:
        self.sink = sink
        self.active = any(pa.types.is_decimal(f.type) for f in schema)
        if not self.active:
            return
        self.head = 8 + schema.serialize().size  # the file's magic and schema message
        self.counter = pa.MockOutputStream()
        self.measure = ipc.new_stream(self.counter, schema)
        self.measure.write_batch(pa.RecordBatch.from_pylist([], schema=schema))  # the schema

    def _message_bytes(self, batch: pa.RecordBatch, metadata: dict[str, str] | None) -> int:
        before = self.counter.tell()
        self.measure.write_batch(batch, custom_metadata=metadata)
        return self.counter.tell() - before

    def metadata(self, batch: pa.RecordBatch) -> dict[str, str] | None:
        """The batch metadata that aligns the most decimal buffers (None: none needed)."""
        if not self.active or batch.num_rows == 0:
            return None
        decimals: list[int] = []
        body: int | None = 0
        for column in batch.columns:
            body = _layout(column, body, decimals)
            if body is None:
                return None
        position = self.sink.tell() or self.head  # the file writer writes its head lazily
        best: tuple[int, dict[str, str] | None] = (-1, None)
        for pad in _PADS:
            start = position + self._message_bytes(batch, pad) - body
            aligned = sum((start + at) % 16 == 0 for at in decimals)
            if aligned > best[0]:
                best = (aligned, pad)
            if aligned == len(decimals):
                break
        return best[1]
