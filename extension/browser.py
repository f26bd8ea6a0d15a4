"""``%ldw browse``: an ipywidgets catalog browser over the public ldw API.

sources -> schemas (the source's own list) -> tables -> columns, a preview of the first rows
(``wh.preview``: nothing is mapped or cached for it), a Map button binding a variable, and a
datasets panel with state and stale badges and cache / evict / refresh. Every widget is an
attribute, so tests (and users) can drive the models without a browser: set
``browser.source.value``, ``browser.table.value``, then ``browser.map_button.click()``.

Nothing picked in the browser is pasted into SQL: a table is named to the API as a
``SOURCE.SCHEMA.TABLE`` reference that the core checks against the source's reflected catalog.
The JupyterLab side panel (:mod:`ldw.extension.lab`) offers the same, always in view.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import ipywidgets as widgets  # the extension may import ipywidgets
import polars as pl

from ldw.client import Warehouse
from ldw.errors import LdwError

from .display import (
    esc,
    format_bytes,
    format_count,
    frame_html,
    one_line,
    preview_html,
    table_html,
)
from .naming import RESERVED_NAMES, name_error, suggest_name, table_ref
from .progress import ProgressReporter

__all__ = ["Browser"]

_COLUMN_KEYS = ["name", "source_type", "arrow_type", "nullable", "note", "policy_tags"]
_DATASET_KEYS = ["name", "state", "stale", "rows", "bytes", "version", "owner", "shared_with",
                 "mapping"]


def _scroll(inner: str, *, max_height: str = "40em") -> str:
    """Both ways scrollable, as wide as the output: wide tables scroll instead of being cut."""
    return (f'<div class="ldw-scroll" style="overflow:auto;max-width:100%;'
            f'max-height:{max_height}">{inner}</div>')


class Browser:
    """A catalog browser for one :class:`ldw.Warehouse`; display it or its ``widget``.

    ``namespace`` is where the Map button binds variables (the notebook's, under ``%ldw browse``).
    """

    #: a name the browser never maps (the preview's dataset in earlier versions; the preview
    #: now maps nothing)
    PREVIEW_DATASET = next(iter(RESERVED_NAMES))

    def __init__(self, warehouse: Warehouse, *, namespace: dict[str, Any] | None = None,
                 progress: ProgressReporter | None = None, preview_rows: int = 10) -> None:
        self.warehouse = warehouse
        self.namespace: dict[str, Any] = {} if namespace is None else namespace
        self.progress = progress or ProgressReporter()
        self.preview_rows = preview_rows
        self.last_message = ""

        layout = widgets.Layout
        self.source = widgets.Dropdown(description="Source", options=[])
        self.schema = widgets.Dropdown(description="Schema", options=[])
        self.table = widgets.Select(description="Table", options=[], rows=12,
                                    layout=layout(width="auto"))
        self.columns = widgets.HTML()
        self.preview_button = widgets.Button(description="Preview", icon="eye",
                                             disabled=True)
        self.preview = widgets.HTML()
        self.name = widgets.Text(description="Name", placeholder="variable name")
        self.map_button = widgets.Button(description="Map", button_style="primary",
                                         icon="plus", disabled=True)
        self.message = widgets.HTML()

        self.datasets_table = widgets.HTML()
        self.dataset = widgets.Dropdown(description="Dataset", options=[])
        self.cache_button = widgets.Button(description="Cache", icon="download")
        self.evict_button = widgets.Button(description="Evict", icon="trash")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.reload_button = widgets.Button(description="Reload", icon="repeat",
                                            tooltip="reload sources and datasets")
        self.output = widgets.Output()

        catalog = widgets.HBox([
            widgets.VBox([self.source, self.schema, self.table],
                         layout=layout(width="34%", min_width="18em")),
            widgets.VBox([self.columns,
                          widgets.HBox([self.preview_button, self.name, self.map_button],
                                       layout=layout(flex_flow="row wrap"))],
                         layout=layout(width="66%", overflow="auto")),
        ], layout=layout(width="100%"))
        self.preview.layout = layout(width="100%", overflow="auto")
        panel = widgets.VBox([
            widgets.HTML("<b>Datasets</b>"), self.datasets_table,
            widgets.HBox([self.dataset, self.cache_button, self.evict_button,
                          self.refresh_button, self.reload_button]),
            self.output,
        ])
        self.widget = widgets.VBox([widgets.HTML("<b>Catalog</b>"), catalog, self.preview,
                                    self.message, panel], layout=layout(width="100%"))
        self.widget.add_class("ldw-browser")

        self.source.observe(self._on_source, names="value")
        self.schema.observe(self._on_schema, names="value")
        self.table.observe(self._on_table, names="value")
        self.name.observe(self._on_name, names="value")
        self.preview_button.on_click(self._on_preview)
        self.map_button.on_click(self._on_map)
        self.cache_button.on_click(lambda _: self._dataset_action("cache"))
        self.evict_button.on_click(lambda _: self._dataset_action("evict"))
        self.refresh_button.on_click(lambda _: self._dataset_action("refresh"))
        self.reload_button.on_click(lambda _: self.reload())
        self.reload()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- messages and errors -------------------------------------------------------------------
    def _say(self, text: str, *, error: bool = False) -> None:
        self.last_message = one_line(text)
        colour = "#cf222e" if error else "#1a7f37"
        self.message.value = f'<span style="color:{colour}">{esc(self.last_message)}</span>'

    @contextlib.contextmanager
    def _action(self, what: str) -> Iterator[None]:
        """Run a widget action: ldw errors become one red line, never a lost traceback."""
        try:
            yield
        except LdwError as exc:
            self._say(f"{what}: {type(exc).__name__}: {exc}", error=True)
        except KeyboardInterrupt:
            self._say(f"{what}: interrupted", error=True)

    # -- the catalog ---------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the sources and the datasets."""
        with self._action("listing sources"):
            names = self.warehouse.sources()["name"].to_list()
            current = self.source.value
            self.source.options = names
            if current in names:
                self.source.value = current
            elif names and self.source.value is None:
                self.source.value = names[0]
        self.refresh_datasets()

    def _on_source(self, change: dict[str, Any]) -> None:
        self.table.options = []
        self._clear_table()
        with self.schema.hold_trait_notifications():
            self.schema.options = []
            self.schema.value = None
        source = change["new"]
        if not source:
            return
        with self._action(f"listing tables of {source}"):
            # the source's own schemas, its default first (e.g. MariaDB: the URL's database)
            self.schema.options = self.warehouse.schemas(source)
            if self.schema.options:
                self.schema.value = self.schema.options[0]

    def _on_schema(self, change: dict[str, Any]) -> None:
        self.table.options = []
        self._clear_table()
        schema, source = change["new"], self.source.value
        if not schema or not source:
            return
        with self._action(f"listing tables of {source}.{schema}"):
            self._show_tables(self.warehouse.tables(source, schema=schema))

    def _show_tables(self, frame: pl.DataFrame) -> None:
        options = []
        for row in frame.iter_rows(named=True):
            kind = row.get("kind") or "table"
            if row.get("rows") is not None:
                rows = f", ~{format_count(row['rows'])} rows"
            else:  # the source keeps no estimate (never analyzed), or a policy hides it
                rows = "" if kind == "view" else ", rows not estimated"
            options.append((f"{row['table']} ({kind}{rows})", row["table"]))
        self.table.options = options
        self.table.value = None

    def table_ref(self) -> str | None:
        """``SOURCE.SCHEMA.TABLE`` for the selected table (``None`` if none is selected)."""
        source, schema, table = self.source.value, self.schema.value, self.table.value
        if not source or not table:
            return None
        return table_ref(source, schema, table)

    def _clear_table(self) -> None:
        self.columns.value = ""
        self.preview.value = ""
        self.preview_button.disabled = True
        self._on_name({"new": self.name.value})

    def _on_table(self, change: dict[str, Any]) -> None:
        self._clear_table()
        if change["new"] is None:
            return
        with self._action("describing the table"):
            ref = self.table_ref()
            if ref is None:
                return
            frame = self.warehouse.describe(ref)
            rows = [{k: row.get(k) for k in _COLUMN_KEYS} for row in frame.iter_rows(named=True)]
            self.columns.value = (f"<b>{esc(ref)}</b> · {len(rows)} columns"
                                  + _scroll(table_html(rows, _COLUMN_KEYS)))
            self.preview_button.disabled = False
            self.name.value = suggest_name(change["new"])

    @staticmethod
    def name_error(name: str) -> str | None:
        """Why ``name`` cannot be mapped and bound, or ``None`` if it can."""
        return name_error(name)

    def _on_name(self, change: dict[str, Any]) -> None:
        problem = self.name_error(change["new"])
        self.map_button.disabled = problem is not None or self.table.value is None
        self.map_button.tooltip = problem or "map the selected table and bind the name"

    # -- actions -------------------------------------------------------------------------------
    def _on_preview(self, _: Any = None) -> None:
        with self._action("preview"):
            ref = self.table_ref()
            if ref is None:
                self._say("select a table first", error=True)
                return
            frame = self.warehouse.preview(ref, self.preview_rows)
            self.preview.value = (f"<i>first {frame.height} rows of {esc(ref)}</i>"
                                  + _scroll(preview_html(frame)))

    def _on_map(self, _: Any = None) -> None:
        name = self.name.value.strip()
        problem = self.name_error(name)
        if problem:
            self._say(f"map: {problem}", error=True)
            return
        with self._action("map"):
            ref = self.table_ref()
            if ref is None:
                self._say("map: select a table first", error=True)
                return
            dataset = self.warehouse.map(name, ref)
            self.namespace[name] = dataset
            self._say(f"mapped {ref} as {name} (bound to the variable {name}; no rows moved)")
            self.refresh_datasets(select=name)

    def refresh_datasets(self, *, select: str | None = None) -> None:
        """Re-read the datasets panel."""
        with self._action("listing datasets"):
            frame = self.warehouse.datasets()
            frame = frame.filter(~pl.col("name").is_in(list(RESERVED_NAMES)))
            keys = [k for k in _DATASET_KEYS if k in frame.columns]
            self.datasets_table.value = (_scroll(frame_html(frame.select(keys)))
                                         if frame.height else "<i>no datasets yet</i>")
            names = frame["name"].to_list()
            current = select or self.dataset.value
            self.dataset.options = names
            self.dataset.value = current if current in names else (names[0] if names else None)
            for button in (self.cache_button, self.evict_button, self.refresh_button):
                button.disabled = not names

    def _dataset_action(self, action: str) -> None:
        name = self.dataset.value
        if not name:
            self._say(f"{action}: no dataset selected", error=True)
            return
        with self._action(f"{action} {name}"):
            dataset = self.warehouse.dataset(name)
            if action == "evict":
                dataset.evict()
            else:
                with self.output, self.progress.watching(name):
                    getattr(dataset, action)(progress=self.progress)
            info = dataset.info()
            size = (f": {format_count(info.get('rows'))} rows, {format_bytes(info.get('bytes'))}"
                    if info.get("rows") is not None else "")
            self._say(f"{name} is {info.get('state')}{size}")
        self.refresh_datasets(select=name)
