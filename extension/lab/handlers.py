"""The panel's HTTP API under ``{base_url}ldw/api/``: Jupyter-authenticated JSON handlers.

Every verb requires the Jupyter server's own authentication (token or login cookie, and its
XSRF check for POSTs) and authorization (resource ``ldw``: reads are ``read``, changes
``write``); there is no other way in. The work runs in a small thread pool so a slow source
never blocks the server's event loop. Errors are JSON ``{"error", "message"}`` with a status
that says what kind of failure it was; an unexpected failure says only "internal error" (the
details go to the Jupyter server's log).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler

from ldw.errors import (
    AccessDenied,
    ConfigError,
    InvalidMapping,
    LdwError,
    PolicyViolation,
    ServerUnavailable,
    SourceError,
    UnknownDataset,
    UnknownSource,
    UnknownTable,
)
from ldw.extension.display import one_line

from .jobs import JobBusy
from .panel import Panel

__all__ = ["API_PREFIX", "routes"]

API_PREFIX = "ldw/api"
log = logging.getLogger("ldw.extension.lab")

# the most specific class first: an AccessRevoked is an AccessDenied before an UnknownDataset
_STATUS: tuple[tuple[type[LdwError], int], ...] = (
    (AccessDenied, 403), (PolicyViolation, 403),
    (UnknownDataset, 404), (UnknownSource, 404), (UnknownTable, 404),
    (ServerUnavailable, 503), (SourceError, 503),
    (InvalidMapping, 400), (ConfigError, 400),
)

Query = Callable[[Panel, Callable[[str], str | None]], Any]
Change = Callable[[Panel, dict[str, Any]], Any]

READS: dict[str, Query] = {
    "status": lambda p, q: p.status(),
    "sources": lambda p, q: p.sources(),
    "schemas": lambda p, q: p.schemas(q("source")),
    "tables": lambda p, q: p.tables(q("source"), q("schema")),
    "columns": lambda p, q: p.columns(q("source"), q("schema"), q("table")),
    "preview": lambda p, q: p.preview(q("source"), q("schema"), q("table"), q("rows") or 10),
    "datasets": lambda p, q: p.datasets(),
}
CHANGES: dict[str, Change] = {
    "map": lambda p, b: p.map(b.get("name"), b.get("source"), b.get("schema"), b.get("table")),
    "action": lambda p, b: p.act(b.get("action"), b.get("name"), b.get("owner"), b.get("args")),
}


def _status_of(exc: LdwError) -> int:
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 400)


class _Handler(APIHandler):
    """One endpoint of the panel's API."""

    auth_resource = "ldw"

    def initialize(self, panel: Panel, executor: Executor) -> None:
        self.panel = panel
        self.executor = executor

    async def _answer(self, work: Callable[[], Any]) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except JobBusy as exc:
            return self._error(409, "Busy", str(exc))
        except LdwError as exc:
            self.panel.guard(exc)
            return self._error(_status_of(exc), type(exc).__name__, str(exc))
        except Exception:
            log.exception("ldw panel: %s %s failed", self.request.method, self.request.path)
            return self._error(500, "InternalError",
                               "internal error (see the Jupyter server's log)")
        self.finish(json.dumps(result, default=str))

    def _error(self, status: int, kind: str, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": kind, "message": one_line(message)}))


class ReadHandler(_Handler):
    @tornado.web.authenticated
    @authorized
    async def get(self, what: str) -> None:
        def query(name: str) -> str | None:
            return self.get_query_argument(name, None)
        read = READS[what]
        await self._answer(lambda: read(self.panel, query))


class ChangeHandler(_Handler):
    @tornado.web.authenticated
    @authorized
    async def post(self, what: str) -> None:
        try:
            body = self.get_json_body()
        except tornado.web.HTTPError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, "BadRequest", "the request body must be a JSON object")
        change = CHANGES[what]
        await self._answer(lambda: change(self.panel, body))


def routes(panel: Panel, executor: Executor) -> list[tuple[str, type, dict[str, Any]]]:
    """The handlers, relative to the server's base URL."""
    kwargs = {"panel": panel, "executor": executor}
    return [(rf"/{API_PREFIX}/({'|'.join(READS)})", ReadHandler, kwargs),
            (rf"/{API_PREFIX}/({'|'.join(CHANGES)})", ChangeHandler, kwargs)]
