"""How ldw shows numbers, sizes and times to people: one set of rules for every display.

Reprs (datasets, export results, progress), ``%ldw status``/``info``/listings and the CLI read
their values through these functions, so the same value looks the same everywhere:

- counts (rows, hits, files) are grouped: ``1,500,000``;
- identifiers (pid, port, seq, uid) never are: ``14353``, ``5432``;
- sizes are in binary units, as ``memory_limit = "4GiB"`` is written: ``4.0 GiB``, ``246.1 MiB``;
- transfer rates are in MB/s (10^6 bytes a second), as the benchmarks report them;
- durations: ``850 ms``, ``2.3 s``, ``4 min 12 s``, ``8 h``;
- moments (epoch seconds on the wire) in local time, ISO, with how long ago:
  ``2026-12-05 14:03:12 (3 min ago)``.

:func:`value` formats a payload value by its key (``bytes_served`` is a size, ``started`` a
moment), also inside nested mappings such as ``status()["bytes_served"]``.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["ago", "count", "duration", "kind_of", "moment", "rate", "size", "value"]

NONE = "—"
_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def size(n: float | None) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``246.1 MiB``, ``4.0 GiB``."""
    if n is None:
        return NONE
    for unit, scale in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def count(n: float | None) -> str:
    """A count, grouped by thousands: ``1,500,000``."""
    if n is None:
        return NONE
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def rate(nbytes: float, seconds: float) -> str:
    """A transfer rate in MB/s (10^6 bytes a second): ``107.3 MB/s``."""
    return f"{nbytes / 1e6 / seconds if seconds > 0 else 0.0:,.1f} MB/s"


def duration(seconds: float | None) -> str:
    """``850 ms``, ``2.3 s``, ``4 min 12 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return NONE
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    days, rest = divmod(round(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    first = next(i for i, (n, _) in enumerate(parts) if n)
    return " ".join(f"{n} {unit}" for n, unit in parts[first:first + 2] if n)


def ago(seconds: float) -> str:
    """``just now``, ``42 s ago``, ``3 min ago``, ``2 h ago``, ``in 5 min`` (the future)."""
    span = abs(seconds)
    if span < 1:
        return "just now"
    short = next(f"{span // scale:.0f} {unit}" for unit, scale in
                 (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)) if span >= scale)
    return f"{short} ago" if seconds > 0 else f"in {short}"


def moment(epoch: float | None, *, now: float | None = None) -> str:
    """Epoch seconds as local ISO time and how long ago: ``2026-12-05 14:03:12 (3 min ago)``."""
    if epoch is None:
        return NONE
    when = _dt.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds")
    return f"{when} ({ago((time.time() if now is None else now) - epoch)})"


# -- payload keys -> how their values read ----------------------------------------------------

_KINDS: dict[str, str] = {
    **dict.fromkeys(("bytes", "used_bytes", "memory_limit", "spilled_bytes", "bytes_served",
                     "bytes_read", "size", "sql_memory_limit", "free_bytes"), "size"),
    **dict.fromkeys(("started", "last_access", "created", "ts", "at", "time", "checked_at",
                     "refreshed_at", "expires"), "moment"),
    **dict.fromkeys(("seconds", "load_seconds", "ttl", "uptime", "sql_timeout", "age"),
                    "duration"),
    **dict.fromkeys(("pid", "port", "seq", "uid", "gid", "id", "version", "snapshot"),
                    "identifier"),
}


def kind_of(key: str) -> str | None:
    """``"size"``, ``"moment"``, ``"duration"``, ``"identifier"`` or None (by the key's name)."""
    kind = _KINDS.get(key)
    if kind is None:
        if key.endswith(("_seconds", "_timeout")):
            return "duration"
        if key.endswith(("_bytes", "_size")):
            return "size"
        if key.endswith(("_id", "_pid", "_port")):
            return "identifier"
        if key.endswith("_at"):
            return "moment"
    return kind


def _nested(text: str, item: Any) -> str:
    return f"({text})" if isinstance(item, Mapping) and item else text


def value(key: str, item: Any) -> str:
    """``item`` as people read it, judged by the key it is found under."""
    if item is None:
        return NONE
    if isinstance(item, bool):
        return str(item)
    if isinstance(item, Mapping):
        inner = [f"{k}: {_nested(value(k if kind_of(str(k)) else key, v), v)}"
                 for k, v in item.items()]
        return ", ".join(inner) or NONE
    if isinstance(item, list | tuple):
        return ", ".join(value(key, v) for v in item) or NONE
    if isinstance(item, int | float):
        kind = kind_of(key)
        if kind == "size":
            return size(item)
        if kind == "moment":
            return moment(item)
        if kind == "duration":
            return duration(item)
        if kind == "identifier":
            return str(item)
        return count(item)
    return str(item)
