"""Column masks: what a user whose policy masks a column sees of it.

A ``Mask`` says three things: its SQL expression over the column (compiled into the source query;
where dialects name functions differently the connector's ``dialect`` answers), its Arrow
function (for masks the source cannot compute, applied to every batch into fresh buffers before
anything is stored or sent) and the Arrow type the column has once masked. Every path that reads
a source (local materialization, preview, scans, cluster tasks) masks batches through
:func:`mask_batches` / :func:`mask_batch`; :func:`masked_schema` gives the stored schema.

A new kind of mask is one subclass here plus its entry in ``MASKS``.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ldw.errors import ConfigError

if TYPE_CHECKING:
    from ldw.connectors.dialect import Dialect

__all__ = ["MASKS", "HashMask", "Mask", "NullMask", "PartialMask", "RedactMask", "hash_array",
           "make_mask", "mask_batch", "mask_batches", "masked_schema"]


@dataclass(frozen=True)
class Mask(abc.ABC):
    """One column's mask, as a policy configures it (``columns.C = { mask = KIND, ... }``)."""

    keep: int = 4  # characters kept by "partial"
    exempt_roles: frozenset[str] = frozenset()

    kind: ClassVar[str]
    applied_in_arrow: ClassVar[bool] = False  # True: the source's SQL returns the raw values
    note: ClassVar[str] = ""  # how the value differs from the source's, for describe/info

    def as_json(self) -> dict[str, Any]:
        """The mask's part of a policy fingerprint (which keys cached versions)."""
        return {"mask": self.kind, "keep": self.keep}

    @abc.abstractmethod
    def sql(self, column: sa.ColumnElement, dialect: Dialect) -> sa.ColumnElement | None:
        """The mask as a SQL expression over ``column``; None for masks applied in Arrow."""

    def apply_arrow(self, array: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
        """The masked values of a batch's column (masks in SQL: already masked, as they are)."""
        return array

    def result_type(self, arrow_type: pa.DataType) -> pa.DataType:
        """The column's Arrow type once masked, given the type the source query returns."""
        return arrow_type


def _is_text(column: sa.ColumnElement) -> bool:
    return isinstance(column.type, sa.String | sa.Text | sa.Enum)


@dataclass(frozen=True)
class NullMask(Mask):
    """NULL, of the column's own type."""

    kind: ClassVar[str] = "null"

    def sql(self, column: sa.ColumnElement, dialect: Dialect) -> sa.ColumnElement:
        return sa.cast(sa.null(), column.type)


@dataclass(frozen=True)
class RedactMask(Mask):
    """'***' for text, NULL otherwise."""

    kind: ClassVar[str] = "redact"

    def sql(self, column: sa.ColumnElement, dialect: Dialect) -> sa.ColumnElement:
        if not _is_text(column):
            return sa.cast(sa.null(), column.type)
        return sa.cast(sa.literal("***"), sa.String)


@dataclass(frozen=True)
class PartialMask(Mask):
    """'***' and the last ``keep`` characters; a value of ``keep`` characters or fewer would be
    shown whole that way, so it becomes '***' alone."""

    kind: ClassVar[str] = "partial"

    def sql(self, column: sa.ColumnElement, dialect: Dialect) -> sa.ColumnElement:
        hidden = sa.cast(sa.literal("***"), sa.String)
        if self.keep == 0:
            return sa.case((column.is_(None), sa.null()), else_=hidden)
        text = sa.cast(column, sa.String) if not _is_text(column) else column
        shown = dialect.concat("***", dialect.text_right(text, self.keep))
        return sa.case((column.is_(None), sa.null()),
                       (dialect.text_length(text) <= self.keep, hidden),
                       else_=shown)


def hash_array(array: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
    """Keyed HMAC-SHA256 (hex) of each value, into fresh buffers; NULL stays NULL.

    Works on the dictionary of distinct values, then ``take``: the raw values never reach the
    result's buffers.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    encoded = pc.dictionary_encode(array)
    digests = []
    for value in encoded.dictionary.to_pylist():
        data = value if isinstance(value, bytes) else str(value).encode()
        digests.append(hmac.new(key, data, hashlib.sha256).hexdigest())
    return pa.array(digests, pa.string()).take(encoded.indices)


@dataclass(frozen=True)
class HashMask(Mask):
    """Keyed HMAC of the value (hex): equal values stay equal, so joins still work. Computed
    in Arrow with the server's mask key, which never reaches the source."""

    kind: ClassVar[str] = "hash"
    applied_in_arrow: ClassVar[bool] = True
    note: ClassVar[str] = "masked: keyed hash (hex)"

    def sql(self, column: sa.ColumnElement, dialect: Dialect) -> None:
        return None

    def apply_arrow(self, array: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
        return hash_array(array, key)

    def result_type(self, arrow_type: pa.DataType) -> pa.DataType:
        return pa.string()


MASKS: dict[str, type[Mask]] = {cls.kind: cls for cls in (HashMask, RedactMask, NullMask,
                                                          PartialMask)}


def make_mask(kind: str, *, keep: int = 4, exempt_roles: Iterable[str] = (),
              where: str = "mask") -> Mask:
    """The mask of ``kind``; ConfigError naming ``where`` for an unknown one."""
    cls = MASKS.get(kind)
    if cls is None:
        raise ConfigError(f"{where} needs mask = one of {list(MASKS)}")
    return cls(keep, frozenset(exempt_roles))


def masked_schema(schema: pa.Schema, masks: Mapping[str, Mask]) -> pa.Schema:
    """``schema`` (what the source query returns) as stored once masks in Arrow are applied."""
    for name, mask in masks.items():
        i = schema.get_field_index(name)
        if i >= 0 and mask.applied_in_arrow:
            field = schema.field(i)
            schema = schema.set(i, field.with_type(mask.result_type(field.type)))
    return schema


def mask_batch(batch: pa.RecordBatch, masks: Mapping[str, Mask], key: bytes | None
               ) -> pa.RecordBatch:
    """``batch`` with the masks applied in Arrow: each masked column rebuilt in fresh buffers."""
    if not any(mask.applied_in_arrow for mask in masks.values()):
        return batch
    if key is None:
        raise ValueError("masks applied in Arrow need the server's mask key")
    arrays, fields = list(batch.columns), list(batch.schema)
    for i, field in enumerate(fields):
        mask = masks.get(field.name)
        if mask is not None and mask.applied_in_arrow:
            arrays[i] = mask.apply_arrow(arrays[i], key)
            fields[i] = field.with_type(mask.result_type(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def mask_batches(batches: Iterable[pa.RecordBatch], masks: Mapping[str, Mask],
                 key: bytes | None) -> Iterator[pa.RecordBatch]:
    """Every batch through :func:`mask_batch` (as they are when no mask applies in Arrow)."""
    if not any(mask.applied_in_arrow for mask in masks.values()):
        yield from batches
        return
    for batch in batches:
        yield mask_batch(batch, masks, key)
