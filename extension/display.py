"""Rich display for notebooks: HTML and plain text for datasets, listings and details.

The core stays free of IPython: :func:`register` installs formatters for :class:`ldw.Dataset` on
the shell's display formatter, and the views returned by the magics (:class:`Listing`,
:class:`Details`) carry their own ``_repr_html_``. Every value is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from ldw import formatting as fmt
from ldw.client import Dataset
from ldw.errors import LdwError
from ldw.types import DatasetInfo

__all__ = ["Details", "Listing", "cell_text", "dataset_html", "dataset_text", "one_line",
           "preview_html", "register", "unregister"]

MAX_ROWS = 200  # rows a listing renders before it says how many it left out

_STATE_COLOURS = {
    "cached": "#1a7f37", "mapped": "#57606a", "materializing": "#0969da", "spilled": "#9a6700",
    "evicted": "#6e7781", "failed": "#cf222e", "lost": "#cf222e", "stale": "#9a6700",
    "cancelled": "#9a6700",
}


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s:/@]*):[^\s@]*@")
_MAX_MESSAGE = 1000


def one_line(text: str) -> str:
    """Collapse a message to one line, hide any ``scheme://user:password@`` and bound its size."""
    text = _URL_PASSWORD.sub(r"\1:***@", " ".join(str(text).split()))
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 1] + "…"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# the shared rules of ldw.formatting, under the names the views here use
format_bytes = fmt.size
format_count = fmt.count
format_seconds = fmt.duration


def badge(text: str, colour: str = "#57606a") -> str:
    return (f'<span class="ldw-badge" style="display:inline-block;padding:0 .5em;margin-right:.3em;'
            f'border-radius:.8em;font-size:85%;color:#fff;background:{colour}">{esc(text)}</span>')


def state_badge(state: str | None) -> str:
    return badge(state or "unknown", _STATE_COLOURS.get(state or "", "#57606a"))


def _cell(key: str, value: Any) -> str:
    """One listing value as escaped HTML: states as badges, the rest by ldw.formatting."""
    if key == "state" and isinstance(value, str):
        return state_badge(value)
    if key == "stale" and isinstance(value, bool):
        return badge("stale", _STATE_COLOURS["stale"]) if value else ""
    if value is None:
        return ""
    return esc(fmt.value(key, value))


def table_html(rows: list[dict[str, Any]], columns: list[str], *, total: int | None = None) -> str:
    head = "".join(f'<th style="text-align:left">{esc(c)}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:left">{_cell(c, r.get(c))}</td>'
                         for c in columns) + "</tr>"
        for r in rows)
    more = ""
    if total is not None and total > len(rows):
        more = f"<div><i>… {total - len(rows):,} more rows not shown</i></div>"
    return (f'<table class="ldw-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>{more}")


def frame_html(frame: pl.DataFrame, *, max_rows: int = MAX_ROWS) -> str:
    """A polars DataFrame as an escaped HTML table (first ``max_rows`` rows)."""
    shown = frame.head(max_rows)
    rows = [{c: _plain(v) for c, v in row.items()} for row in shown.iter_rows(named=True)]
    return table_html(rows, frame.columns, total=frame.height)


def cell_text(value: Any) -> str | None:
    """One data value as preview text; ``None`` for NULL (never the same as ``""``). Floats
    show 10 significant digits, not their full repr (0.1 + 0.2 shows 0.3)."""
    if value is None:
        return None
    if isinstance(value, float):
        return format(value, ".10g")
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return raw[:32].hex() + ("…" if len(raw) > 32 else "")
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat(sep=" ") if isinstance(value, _dt.datetime) else value.isoformat()
    return str(value)


_NULL_HTML = '<span class="ldw-null" style="color:#8c959f;font-style:italic">NULL</span>'


def preview_html(frame: pl.DataFrame, *, max_rows: int = MAX_ROWS) -> str:
    """Data rows as an escaped HTML table: NULL marked as NULL (an empty string stays empty),
    floats short, numbers right-aligned, nothing wrapped (wide tables scroll, see _scroll)."""
    shown = frame.head(max_rows)
    numeric = [dtype.is_numeric() for dtype in shown.dtypes]
    cell = 'style="text-align:{};white-space:nowrap"'
    head = "".join(f'<th {cell.format("right" if n else "left")}>{esc(c)}</th>'
                   for c, n in zip(shown.columns, numeric, strict=True))
    body = "".join(
        "<tr>" + "".join(
            f'<td {cell.format("right" if n else "left")}>'
            f'{_NULL_HTML if (text := cell_text(v)) is None else esc(text)}</td>'
            for v, n in zip(row, numeric, strict=True)) + "</tr>"
        for row in shown.iter_rows())
    more = (f"<div><i>… {frame.height - shown.height:,} more rows not shown</i></div>"
            if frame.height > shown.height else "")
    return (f'<table class="ldw-table ldw-preview"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>{more}")


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | list | tuple | type(None)) \
        else str(value)


# -- datasets ---------------------------------------------------------------------------------

def _safe_info(ds: Dataset) -> tuple[DatasetInfo | None, str | None]:
    try:
        return ds.info(), None
    except LdwError as exc:
        return None, str(exc)


def _column_rows(ds: Dataset, info: DatasetInfo) -> list[dict[str, Any]]:
    rows = [dict(r) for r in info.get("columns") or []]
    if not rows:
        rows = [{"name": f.name, "arrow_type": str(f.type), "nullable": f.nullable}
                for f in ds.schema]
    tags = info.get("policy_tags") or {}
    for row in rows:
        if row.get("name") in tags and not row.get("policy_tags"):
            row["policy_tags"] = tags[row["name"]]
    return rows


def _flags(info: DatasetInfo) -> list[str]:
    flags = []
    if info.get("pinned"):
        flags.append("pinned")
    if info.get("memory_only"):
        flags.append("memory-only")
    if info.get("ttl"):
        flags.append(f"ttl {format_seconds(info['ttl'])}")
    if info.get("stale"):
        flags.append("stale")
    freshness = info.get("freshness") or {}
    if freshness.get("incremental"):
        flags.append(f"incremental {freshness['incremental']}")
    if freshness.get("refresh") not in (None, "manual"):
        flags.append(f"refresh {freshness['refresh']}")
    for policy in info.get("policies") or []:
        flags.append(str(policy))
    if info.get("shared_with"):
        flags.append("shared with " + ", ".join(map(str, info["shared_with"])))
    return flags


HEAD_ROWS = 5  # rows a cached dataset's display shows, read from the cache


def _head(ds: Dataset, info: DatasetInfo) -> pl.DataFrame | None:
    """The first rows of a cached dataset, from the cache only (never the source)."""
    if info.get("version") is None:
        return None
    try:
        return ds.peek(HEAD_ROWS)
    except (LdwError, AttributeError):  # a server without peek, or the version just went
        return None


def _summary(info: DatasetInfo) -> list[str]:
    parts = [str(info.get("mapping") or "")]
    if info.get("mapped_columns") is not None:
        parts.append(f"columns {', '.join(info['mapped_columns'])}")
    if info.get("where"):
        parts.append(f"where {info['where']}")
    if info.get("limit") is not None:
        parts.append(f"limit {format_count(info['limit'])}")
    if info.get("owner"):
        parts.append(f"owner {info['owner']}")
    if info.get("rows") is not None:
        parts.append(f"{format_count(info['rows'])} rows")
    if info.get("bytes") is not None:
        parts.append(format_bytes(info["bytes"]))
    if info.get("version"):
        parts.append(f"version {info['version']}")
    if info.get("load_seconds") is not None:
        parts.append(f"loaded in {format_seconds(info['load_seconds'])}")
    return [p for p in parts if p]


def dataset_html(ds: Dataset) -> str:
    """HTML for a Dataset: name, state, flags, size, version, schema with type notes."""
    info, error = _safe_info(ds)
    if info is None:
        return (f'<div class="ldw-dataset"><b>{esc(ds.name)}</b> {state_badge("unavailable")} '
                f"{esc(error)}</div>")
    colour_flags = {"stale": "#9a6700", "memory-only": "#8250df"}
    flags = "".join(badge(f, colour_flags.get(f, "#0969da")) for f in _flags(info))
    summary = esc(" · ".join(_summary(info)))
    columns = _column_rows(ds, info)
    keys = ["name", "arrow_type", "source_type", "nullable", "note"]
    if any(r.get("policy_tags") for r in columns):
        keys.append("policy_tags")
    keys = [k for k in keys if any(k in r for r in columns)]
    lossy = info.get("lossy") or {}
    column_summary = f"{len(columns)} columns" + (
        f", {len(lossy)} with type notes" if lossy else "")
    notes = ""
    if info.get("error"):
        notes = f'<div style="color:#cf222e">{esc(one_line(info["error"]))}</div>'
    reason = (info.get("freshness") or {}).get("reason")
    if info.get("stale") and reason:
        notes += f'<div style="color:#9a6700">stale: {esc(one_line(str(reason)))}</div>'
    head = _head(ds, info)
    rows = ""
    if head is not None:
        shown = [{c: _plain(v) for c, v in row.items()} for row in head.iter_rows(named=True)]
        rows = (f"<details open><summary>first {len(shown)} rows</summary>"
                f"{table_html(shown, head.columns, total=info.get('rows'))}</details>")
    return (
        f'<div class="ldw-dataset"><div><b>{esc(info.get("name", ds.name))}</b> '
        f'{state_badge(info.get("state"))}{flags}</div>'
        f'<div style="color:#57606a">{summary}</div>{notes}'
        f'<details{" open" if len(columns) <= 30 and head is None else ""}>'
        f"<summary>{esc(column_summary)}</summary>{table_html(columns, keys)}</details>"
        f"{rows}</div>"
    )


def dataset_text(ds: Dataset) -> str:
    """Plain text for a Dataset: a header line, then one line per column."""
    info, error = _safe_info(ds)
    if info is None:
        return f"ldw.Dataset {ds.name!r} [unavailable] {error}"
    head = f"ldw.Dataset {info.get('name', ds.name)!r} [{info.get('state')}]"
    flags = _flags(info)
    lines = [head + (f" ({', '.join(flags)})" if flags else ""), "  " + " · ".join(_summary(info))]
    if info.get("error"):
        lines.append(f"  error: {one_line(info['error'])}")
    columns = _column_rows(ds, info)
    width = max((len(str(c.get("name"))) for c in columns), default=0)
    for c in columns:
        nullable = "" if c.get("nullable", True) else " not null"
        note = f"  -- {c['note']}" if c.get("note") else ""
        lines.append(f"  {str(c.get('name')):<{width}}  {c.get('arrow_type')}{nullable}{note}")
    head = _head(ds, info)
    if head is not None:
        with pl.Config(tbl_rows=HEAD_ROWS, tbl_cols=-1, fmt_str_lengths=40,
                       tbl_hide_dataframe_shape=True):
            lines += [f"  first {head.height} rows:", *("  " + line for line in
                                                        str(head).splitlines())]
    return "\n".join(lines)


def _dataset_pretty(ds: Dataset, printer: Any, cycle: bool) -> None:
    printer.text(dataset_text(ds))


# -- views returned by the magics ---------------------------------------------------------------

class Listing:
    """A titled table (``%ldw ls``, ``sources``, ``audit``...); ``.frame`` is the data."""

    def __init__(self, title: str, frame: pl.DataFrame | Iterable[Mapping[str, Any]]) -> None:
        self.title = title
        self.frame = frame if isinstance(frame, pl.DataFrame) else pl.DataFrame(list(frame))

    def to_polars(self) -> pl.DataFrame:
        return self.frame

    def __len__(self) -> int:
        return self.frame.height

    def __repr__(self) -> str:
        if self.frame.height == 0:
            return f"{self.title}: none"
        with pl.Config(tbl_rows=MAX_ROWS, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=1000):
            return f"{self.title}:\n{_readable(self.frame)}"

    def _repr_html_(self) -> str:
        if self.frame.height == 0:
            return f'<div class="ldw-listing"><b>{esc(self.title)}</b>: none</div>'
        return (f'<div class="ldw-listing"><b>{esc(self.title)}</b> '
                f'<span style="color:#57606a">({self.frame.height:,})</span>'
                f"{frame_html(self.frame)}</div>")


def _readable(frame: pl.DataFrame) -> pl.DataFrame:
    """Sizes, moments and durations as text (ldw.formatting) for the plain-text listing."""
    readable = [
        pl.col(name).map_elements(lambda v, key=name: fmt.value(key, v), return_dtype=pl.String)
        for name, dtype in frame.schema.items()
        if dtype.is_numeric() and fmt.kind_of(name) in {"size", "moment", "duration"}]
    return frame.with_columns(readable) if readable else frame


_NOT_SCALAR = frozenset({"columns", "source_sql", "schema", "arrow_schema"})  # the columns say it


class Details:
    """Key/value details (``%ldw info``, ``%ldw status``); ``.data`` is the dict. Values read
    by ldw.formatting (sizes in binary units, times local with "ago", ids ungrouped);
    ``per_dataset``: keys whose values are ``{dataset: value}`` maps, shown as one table."""

    def __init__(self, title: str, data: Mapping[str, Any], *,
                 per_dataset: Iterable[str] = ()) -> None:
        self.title = title
        self.data = dict(data)
        self.per_dataset = [k for k in per_dataset if isinstance(self.data.get(k), Mapping)]

    def _value_text(self, key: str, value: Any) -> str:
        return fmt.value(key, value)

    def _scalars(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self.data.items()
                if k not in _NOT_SCALAR and k not in self.per_dataset]

    def _dataset_rows(self) -> list[dict[str, Any]]:
        names = sorted({n for k in self.per_dataset for n in self.data[k]})
        return [{"dataset": n, **{k: self.data[k].get(n) for k in self.per_dataset}}
                for n in names]

    def __repr__(self) -> str:
        width = max((len(k) for k, _ in self._scalars()), default=0)
        lines = [f"{self.title}:"]
        lines += [f"  {k:<{width}}  {self._value_text(k, v)}" for k, v in self._scalars()]
        rows = self._dataset_rows()
        if rows:
            name_width = max(len(str(r["dataset"])) for r in rows)
            lines.append(f"  {'dataset':<{name_width}}  " + "  ".join(self.per_dataset))
            for row in rows:
                cells = "  ".join(f"{fmt.value(k, row[k]):>{len(k)}}" for k in self.per_dataset)
                lines.append(f"  {row['dataset']:<{name_width}}  {cells}")
        for sql in self.data.get("source_sql") or []:
            lines.append(f"  sql: {sql}")
        for c in self.data.get("columns") or []:
            note = f"  -- {c['note']}" if c.get("note") else ""
            lines.append(f"  column {c.get('name')}: {c.get('arrow_type')}{note}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f'<tr><th style="text-align:left">{esc(k)}</th><td style="text-align:left">'
            f'{state_badge(v) if k == "state" else esc(self._value_text(k, v))}</td></tr>'
            for k, v in self._scalars())
        sql = "".join(f"<pre>{esc(s)}</pre>" for s in self.data.get("source_sql") or [])
        columns = self.data.get("columns") or []
        column_table = ""
        if columns:
            keys = [k for k in ("name", "arrow_type", "source_type", "nullable", "note")
                    if any(k in c for c in columns)]
            column_table = f"<details><summary>{len(columns)} columns</summary>" \
                           f"{table_html(list(columns), keys)}</details>"
        dataset_rows = self._dataset_rows()
        per_dataset = table_html(dataset_rows, ["dataset", *self.per_dataset]) \
            if dataset_rows else ""
        source = f"<details><summary>SQL sent to the source</summary>{sql}</details>" if sql else ""
        return (f'<div class="ldw-details"><b>{esc(self.title)}</b>'
                f'<table class="ldw-table">{rows}</table>{per_dataset}{column_table}{source}'
                "</div>")


# -- registration -----------------------------------------------------------------------------

def register(shell: Any) -> None:
    """Install the Dataset formatters on ``shell`` (idempotent)."""
    formatters = shell.display_formatter.formatters
    formatters["text/html"].for_type(Dataset, dataset_html)
    formatters["text/plain"].for_type(Dataset, _dataset_pretty)


def unregister(shell: Any) -> None:
    formatters = shell.display_formatter.formatters
    for mime in ("text/html", "text/plain"):
        formatters[mime].pop(Dataset, None)
