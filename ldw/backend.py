"""How a ``Warehouse`` reaches an engine: in this process, over the Unix socket, or over Flight.

Every backend offers the same three calls — ``call`` (a JSON operation), ``attach`` (a cached
version as a pyarrow Table) and ``stream`` (record batches: a source scan or a SQL result) — so
the client API above them is one piece of code whatever the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from ldw.types import AttachInfo, Progress

if TYPE_CHECKING:
    from ldw.engine import Engine

__all__ = ["Backend", "InProcessBackend"]

ProgressCallback = Callable[[Progress], None]


class Backend(Protocol):
    user: str
    where: str  # shown in reprs: "in-process", "local server (pid 123)", "grpc://host:port"
    # (optional) writes_exports: True when the client shares the server's file system and
    # writes exports itself, as its own OS user; otherwise the server writes them, confined

    def call(self, op: str, args: dict[str, Any] | None = None, *,
             progress: ProgressCallback | None = None) -> Any: ...

    def attach(self, ref: dict[str, Any], *, progress: ProgressCallback | None = None
               ) -> tuple[AttachInfo, pa.Table]: ...

    def stream(self, op: str, args: dict[str, Any]) -> pa.RecordBatchReader: ...

    def close(self) -> None: ...


class InProcessBackend:
    """The engine runs inside the calling process (tests, scripts)."""

    where = "in-process"
    writes_exports = True  # the export is written by this process, as its OS user

    def __init__(self, engine: Engine, user: str) -> None:
        self.engine = engine
        self.user = user
        from ldw.service import Service  # server-side code, in-process only

        self.service = Service(engine)

    def call(self, op: str, args: dict[str, Any] | None = None, *,
             progress: ProgressCallback | None = None) -> Any:
        return self.service.call(self.user, op, dict(args or {}), progress)

    def attach(self, ref: dict[str, Any], *, progress: ProgressCallback | None = None
               ) -> tuple[AttachInfo, pa.Table]:
        return self.service.attach_table(self.user, dict(ref), progress)

    def stream(self, op: str, args: dict[str, Any]) -> pa.RecordBatchReader:
        return self.service.stream(self.user, op, args)

    def close(self) -> None:
        self.engine.close()
