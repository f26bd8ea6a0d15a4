"""What ``wh.explain(query)`` returns: the plan as data, shown as text."""

from __future__ import annotations

from typing import Any

__all__ = ["Explain"]


class Explain(dict):
    """The plan of one query (a dict, as the server sent it), printed per relation.

    Keys: ``query``, ``relations`` (one dict each: ``relation``, ``kind``, ``read`` = cache |
    source | query | slice (an automatically cached slice, described in ``slice``),
    ``columns``, ``pushed``, ``not_pushed``, ``limit``, ``sql`` sent,
    ``estimated_rows``, ``rows`` read and ``seconds`` after a run), ``joins`` (where they run),
    ``pushdown`` (whether the whole query went to one source, and why), ``duckdb_sql`` and
    ``rows`` (the result's, after a run).
    """

    @property
    def relations(self) -> list[dict[str, Any]]:
        return self.get("relations", [])

    @property
    def source_sql(self) -> dict[str, list[str]]:
        """The SQL sent (or that would be sent) per relation read from a source."""
        return {r["relation"]: r["sql"] for r in self.relations
                if r["read"] not in ("cache", "slice")}

    def __str__(self) -> str:
        lines = []
        for r in self.relations:
            where = "cache" if r["read"] == "cache" else (
                f"source {r['source']}" if r["read"] == "source" else
                f"automatically cached slice {r['slice']['slice']}" if r["read"] == "slice"
                else "its own query")
            counts = [f"~{r['estimated_rows']:,} rows estimated"
                      if r.get("estimated_rows") is not None else "",
                      f"{r['rows']:,} rows read in {r['seconds']:.3f} s"
                      if r.get("rows") is not None and r.get("seconds") is not None else ""]
            counts = [c for c in counts if c]
            lines.append(f"{r['relation']}: from {where}"
                         + (f" ({'; '.join(counts)})" if counts else ""))
            if r["read"] != "cache":
                lines.append(f"  columns: {', '.join(r['columns'])}")
                if r.get("slice"):
                    held = " OR ".join(r["slice"]["conditions"]) or "every row"
                    lines.append(f"  slice: {held} ({r['slice']['rows']:,} rows)")
                for text in r["pushed"]:
                    lines.append(f"  pushed: {text}")
                if r.get("limit") is not None:
                    lines.append(f"  limit: {r['limit']}")
                for text in r["not_pushed"]:
                    lines.append(f"  not pushed: {text}")
                for sql in r["sql"]:
                    lines.append(f"  sql: {sql}")
        if self.get("joins"):
            lines.append(f"joins: {self['joins']}")
        pushdown = self.get("pushdown") or {}
        if pushdown:
            taken = "taken" if pushdown.get("whole_query") else "not taken"
            lines.append(f"whole-query pushdown: {taken}: {pushdown.get('why')}")
        if self.get("rows") is not None:
            lines.append(f"result: {self['rows']:,} rows")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))
