"""Progress for materializations: an ipywidgets display in a notebook, one text line elsewhere.

A :class:`ProgressReporter` is a plain ``ldw.Progress`` callback, so it can be given to
``ldw.connect(progress=...)`` or ``ds.cache(progress=...)``. It opens one display per run of a
dataset (and one row per partition when the reports carry a ``partition``) and closes it on the
final report; :meth:`ProgressReporter.watching` marks the display as failed or interrupted when
the run ends with an exception instead.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from ldw import formatting as fmt
from ldw.types import Progress

from .display import esc

__all__ = ["ProgressReporter"]


def _line(p: Progress) -> str:
    part = getattr(p, "partition", None)
    where = f"{p.dataset}" + (f" [partition {part}]" if part is not None else "")
    verb = "cached" if p.done else "caching"
    return (f"{verb} {where}: {fmt.count(p.rows)} rows{_share(p)} · {fmt.size(p.bytes)} · "
            f"{fmt.rate(p.bytes, p.seconds)} · {fmt.duration(p.seconds)}")


def _share(p: Progress) -> str:
    """`` of ~N (41%, ~12 s left)`` where the rows to expect are known (an estimate)."""
    total = _total(p)
    if total is None or p.done:
        return ""
    left = ""
    if 0 < p.rows < total and p.seconds > 0:
        left = f", ~{fmt.duration(p.seconds * (total - p.rows) / p.rows)} left"
    return f" of ~{fmt.count(total)} ({min(p.rows / total, 1.0):.0%}{left})"


def _total(p: Progress) -> int | None:
    total = getattr(p, "total_rows", None)  # an estimate, if the engine knows one
    return total if isinstance(total, int) and total > 0 else None


class _WidgetDisplay:
    """One ipywidgets HTML row per partition key, in a VBox displayed in the cell output."""

    def __init__(self) -> None:
        import ipywidgets as widgets  # the extension may import ipywidgets
        from IPython.display import display

        self._widgets = widgets
        self.box = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.box.add_class("ldw-progress")
        self.rows: dict[Any, Any] = {}
        display(self.box)

    def _row(self, key: Any) -> Any:
        if key not in self.rows:
            self.rows[key] = self._widgets.HTML()
            self.box.children = (*self.box.children, self.rows[key])
        return self.rows[key]

    def update(self, key: Any, p: Progress) -> None:
        total = _total(p)
        if p.done:
            bar = '<progress value="1" max="1"></progress>'
        elif total:
            bar = f'<progress value="{min(p.rows, total)}" max="{total}"></progress>'
        else:
            bar = "<progress></progress>"  # indeterminate: the row count is not known ahead
        self._row(key).value = (f'<div class="ldw-progress-row">{bar} '
                                f"<span>{esc(_line(p))}</span></div>")

    def fail(self, message: str) -> None:
        for row in self.rows.values() or [self._row(None)]:
            row.value = (f'<div class="ldw-progress-row" style="color:#cf222e">'
                         f"<progress value=\"0\" max=\"1\"></progress> {esc(message)}</div>")


class _TextDisplay:
    """A single line rewritten in place on a terminal; only the outcome when not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self.width = 0

    def _write(self, text: str, *, final: bool) -> None:
        if self.live:
            pad = " " * max(0, self.width - len(text))
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
            self.width = 0 if final else len(text)
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, key: Any, p: Progress) -> None:
        self._write(_line(p), final=p.done)

    def fail(self, message: str) -> None:
        self._write(message, final=True)


class ProgressReporter:
    """An ``ldw.Progress`` callback that renders rows, MB and MB/s while a dataset loads.

    ``widgets=None`` picks ipywidgets inside a Jupyter kernel and text otherwise.

    >>> ds.cache(progress=ProgressReporter())  # doctest: +SKIP
    """

    def __init__(self, *, widgets: bool | None = None, stream: TextIO | None = None,
                 min_interval: float = 0.1) -> None:
        self.widgets = widgets
        self.stream = stream
        self.min_interval = min_interval
        # dataset -> (its display, the last report per partition, when it was last rendered)
        self._open: dict[str, tuple[Any, dict[Any, Progress], float]] = {}
        self.last_display: _WidgetDisplay | _TextDisplay | None = None  # the newest, to inspect

    def _use_widgets(self) -> bool:
        if self.widgets is not None:
            return self.widgets
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None or getattr(shell, "kernel", None) is None:
            return False
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return False
        return True

    def _new_display(self) -> _WidgetDisplay | _TextDisplay:
        if self._use_widgets():
            self.last_display = _WidgetDisplay()
        else:
            self.last_display = _TextDisplay(self.stream or sys.stdout)
        return self.last_display

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        key = getattr(p, "partition", None)  # None: the whole dataset
        current = self._open.get(p.dataset)
        if current is None or (key in current[1] and p.seconds < current[1][key].seconds):
            current = (self._new_display(), {}, 0.0)  # a new run of this dataset
        display, last, rendered = current
        last[key] = p
        if p.done or now - rendered >= self.min_interval:
            display.update(key, p)
            rendered = now
        if p.done and key is None:
            self._open.pop(p.dataset, None)
        else:
            self._open[p.dataset] = (display, last, rendered)

    @contextlib.contextmanager
    def watching(self, dataset: str) -> Iterator[None]:
        """Mark the displays the block opened as failed if it raises (or is interrupted).

        ``dataset`` is the name the user gave; reports may name it ``owner/name``.
        """
        before = set(self._open)
        try:
            yield
        except KeyboardInterrupt:
            self._close(dataset, before, "interrupted")
            raise
        except Exception as exc:
            self._close(dataset, before, f"failed ({type(exc).__name__})")
            raise

    def _close(self, dataset: str, before: set[str], outcome: str) -> None:
        for key in list(self._open):
            if key not in before or key == dataset or key.endswith("/" + dataset):
                display = self._open.pop(key)[0]
                display.fail(f"{key}: {outcome}")
