"""How an export result reads in a terminal and a notebook: path, format, files, rows, size.

Works on any export result by its fields (``path``, ``rows``, ``bytes``, ``seconds`` and, where
the result has them, ``files``, ``manifest_path``, ``format``, ``mode``, ``version``), so every
export format shows the same way. Values follow :mod:`ldw.formatting`.
"""

from __future__ import annotations

import html
from typing import Any

from ldw import formatting as fmt

__all__ = ["file_text", "result_html", "result_text"]

MAX_FILES = 20  # file rows shown before "... N more"


def file_text(file: Any) -> str:
    """One exported file: ``part-0.parquet: 1,000 rows, 42.0 KiB, sha256 07f5dc2f…``."""
    return (f"{file.path}: {fmt.count(file.rows)} rows, {fmt.size(file.bytes)}, "
            f"sha256 {file.sha256[:8]}…")


def _headline(result: Any) -> str:
    files = getattr(result, "files", None)
    parts = [f"{fmt.count(result.rows)} rows"]
    if files is not None:
        parts.append(f"{len(files):,} file{'s' if len(files) != 1 else ''}")
    parts.append(fmt.size(result.bytes))
    parts.append(f"in {fmt.duration(result.seconds)}")
    what = getattr(result, "format", None) or "parquet"
    mode, version = getattr(result, "mode", None), getattr(result, "version", None)
    if mode:
        what += f", {mode}"
    if version is not None:
        what += f", version {version}"
    return f"exported {result.path} ({what}): " + ", ".join(parts)


def result_text(result: Any) -> str:
    """A few lines: the headline, then the files (at most ``MAX_FILES``) and the manifest."""
    lines = [_headline(result)]
    files = list(getattr(result, "files", None) or ())
    lines += [f"  {file_text(f)}" for f in files[:MAX_FILES]]
    if len(files) > MAX_FILES:
        lines.append(f"  … {len(files) - MAX_FILES:,} more files")
    manifest = getattr(result, "manifest_path", None)
    if manifest is not None:
        lines.append(f"  manifest: {manifest}")
    return "\n".join(lines)


def result_html(result: Any) -> str:
    """The same as HTML: the headline and a table of the files (escaped)."""
    esc = html.escape
    files = list(getattr(result, "files", None) or ())
    rows = "".join(
        f"<tr><td>{esc(f.path)}</td><td style='text-align:right'>{esc(fmt.count(f.rows))}</td>"
        f"<td style='text-align:right'>{esc(fmt.size(f.bytes))}</td></tr>"
        for f in files[:MAX_FILES])
    more = (f"<div><i>… {len(files) - MAX_FILES:,} more files</i></div>"
            if len(files) > MAX_FILES else "")
    table = (f"<table class='ldw-table'><thead><tr><th style='text-align:left'>file</th>"
             f"<th>rows</th><th>size</th></tr></thead><tbody>{rows}</tbody></table>{more}"
             if files else "")
    manifest = getattr(result, "manifest_path", None)
    foot = f"<div style='color:#57606a'>manifest: {esc(str(manifest))}</div>" if manifest else ""
    return f"<div class='ldw-export'><b>{esc(_headline(result))}</b>{table}{foot}</div>"
