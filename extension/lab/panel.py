"""What the JupyterLab side panel shows and does, as JSON, over the public ldw API.

One :class:`Panel` per Jupyter server. It connects to ldw exactly as ``%ldw connect`` does in a
notebook of the same Jupyter server: the local ldw server through its Unix socket, where the
server knows the caller by its OS user (the notebook's user), or a remote server with the token
from ``$LDW_TOKEN``, read by the ldw client itself. The panel has no credential of its own and
never sees a source's: ldw's client has none. Every answer is built from what the API returns
(``sources()`` never carries a password; messages are collapsed by ``one_line``, which also
hides any ``scheme://user:password@``).
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ldw.client import Dataset, Warehouse, connect
from ldw.errors import AccessDenied, BadRequest, InvalidMapping, LdwError, ServerUnavailable
from ldw.extension.display import cell_text, one_line
from ldw.extension.naming import name_error, suggest_name, table_ref

from .jobs import Job, Jobs

__all__ = ["ACTIONS", "Panel"]

MAX_PREVIEW_ROWS = 200

#: the dataset actions the panel offers: name -> (runs as a job, needs to own the dataset)
ACTIONS: dict[str, tuple[bool, bool]] = {
    "cache": (True, True), "refresh": (True, True), "export": (True, False),
    "evict": (False, True), "pin": (False, True), "unpin": (False, True),
    "share": (False, True), "unshare": (False, True),
}


def _text(value: Any, what: str, *, required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise BadRequest(f"{what} is missing")
        return None
    if not isinstance(value, str) or len(value) > 512:
        raise BadRequest(f"{what} must be a name")
    return value


class Panel:
    """The panel's view of ldw for the user the Jupyter server runs as."""

    def __init__(self, *, url: str | None = None, config: str | None = None,
                 autostart: bool = True, root_dir: str | os.PathLike[str] = ".") -> None:
        self.url = url or None
        self.config = config or None
        self.autostart = autostart
        self.root_dir = Path(root_dir).resolve()
        self._lock = threading.Lock()
        self._warehouse: Warehouse | None = None
        self._user: str | None = None
        self.jobs = Jobs()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ldw-panel-info")

    # -- the connection ------------------------------------------------------------------------
    @property
    def warehouse(self) -> Warehouse:
        """The connection, made on first use (and again after the server went away)."""
        with self._lock:
            if self._warehouse is None:
                options: dict[str, Any] = {}
                if self.url is None:
                    options["autostart"] = self.autostart
                    if self.config:
                        options["config"] = self.config
                self._warehouse = connect(self.url, **options)
                self._user = None
            return self._warehouse

    def forget_connection(self) -> None:
        """Drop the connection after ServerUnavailable: the next request connects again."""
        with self._lock:
            warehouse, self._warehouse = self._warehouse, None
        if warehouse is not None:
            warehouse.close()

    def close(self) -> None:
        self.forget_connection()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def user(self) -> str:
        if self._user is None:
            self._user = str(self.warehouse.status().get("user") or "")
        return self._user

    def setup_code(self) -> str:
        """The notebook cell that connects a kernel as the panel is connected (no token: a
        remote server's token comes from ``$LDW_TOKEN`` in the kernel too)."""
        args = [self.url] if self.url else []
        if self.config and not self.url:
            args += ["--config", self.config]
        line = " ".join(["%ldw connect", *(shlex.quote(a) for a in args), "--as wh"])
        return f"%load_ext ldw\n{line}"

    # -- reads -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status = self.warehouse.status()
        self._user = str(status.get("user") or "")
        keys = ("user", "roles", "governed", "mode", "backend", "memory_limit", "used_bytes",
                "spilled_bytes", "datasets", "cached")
        where = one_line(self.url) if self.url else f"local server (pid {status.get('pid')})"
        return {**{k: status.get(k) for k in keys}, "where": where,
                "setup_code": self.setup_code()}

    def sources(self) -> list[dict[str, Any]]:
        keep = ("name", "dialect", "host", "port", "database", "transport")
        return [{k: row.get(k) for k in keep}
                for row in self.warehouse.sources().iter_rows(named=True)]

    def schemas(self, source: Any) -> list[str]:
        return list(self.warehouse.schemas(_text(source, "source")))

    def tables(self, source: Any, schema: Any) -> list[dict[str, Any]]:
        source = _text(source, "source")
        schema = _text(schema, "schema", required=False)
        frame = self.warehouse.tables(source, schema=schema)
        rows = []
        for row in frame.iter_rows(named=True):
            try:
                ref = table_ref(source, row["schema"], row["table"])
            except InvalidMapping:
                ref = None  # listed, but not yet referable by name
            rows.append({"schema": row["schema"], "table": row["table"], "kind": row["kind"],
                         "rows": row["rows"], "ref": ref, "name": suggest_name(row["table"])})
        return rows

    def _ref(self, source: Any, schema: Any, table: Any) -> str:
        return table_ref(_text(source, "source"), _text(schema, "schema", required=False),
                         _text(table, "table"))

    def columns(self, source: Any, schema: Any, table: Any) -> dict[str, Any]:
        """The table's columns with their policy tags, or ``denied`` with the reason."""
        ref = self._ref(source, schema, table)
        try:
            frame = self.warehouse.describe(ref)
        except AccessDenied as exc:
            return {"ref": ref, "denied": True, "message": one_line(str(exc)), "columns": [],
                    "tags": ["denied"]}
        columns = [{"name": r["name"], "source_type": r["source_type"],
                    "arrow_type": r["arrow_type"], "nullable": r["nullable"], "note": r["note"],
                    "tags": list(r["policy_tags"] or [])} for r in frame.iter_rows(named=True)]
        tags = sorted({t for c in columns for t in c["tags"] if not t.startswith("mask:")})
        if any(t.startswith("mask:") for c in columns for t in c["tags"]):
            tags.insert(0, "masked")
        return {"ref": ref, "denied": False, "message": "", "columns": columns, "tags": tags}

    def preview(self, source: Any, schema: Any, table: Any, rows: Any = 10) -> dict[str, Any]:
        """The first rows as the user's policy shows them; nothing is mapped or cached.
        Cells are text, ``None`` for NULL (so an empty string stays distinguishable)."""
        ref = self._ref(source, schema, table)
        try:
            limit = min(max(int(rows), 1), MAX_PREVIEW_ROWS)
        except (TypeError, ValueError):
            raise BadRequest(f"rows must be a whole number, not {rows!r}") from None
        try:
            frame = self.warehouse.preview(ref, limit)
        except AccessDenied as exc:
            return {"ref": ref, "denied": True, "message": one_line(str(exc)), "columns": [],
                    "rows": []}
        return {"ref": ref, "denied": False, "message": "",
                "columns": [{"name": n, "type": str(t)} for n, t in frame.schema.items()],
                "rows": [[cell_text(v) for v in row] for row in frame.iter_rows()]}

    def datasets(self) -> dict[str, Any]:
        """My datasets and those shared with me, each with its live state, and the jobs."""
        me = self.user()
        rows = list(self.warehouse.datasets().iter_rows(named=True))
        handles = [Dataset(self.warehouse, r["name"], None if r["owner"] == me else r["owner"])
                   for r in rows]
        infos = list(self._pool.map(_safe_info, handles))
        listed = [self._dataset_json(row, *answer, mine=row["owner"] == me)
                  for row, answer in zip(rows, infos, strict=True)]
        return {"user": me, "datasets": listed, "jobs": self.jobs.listing()}

    def _dataset_json(self, row: dict[str, Any], info: dict[str, Any] | None,
                      error: Exception | None, *, mine: bool) -> dict[str, Any]:
        ref = row["name"] if mine else f"{row['owner']}/{row['name']}"
        info = info or {}
        freshness = info.get("freshness") or {}
        job = self.jobs.running(ref)
        return {
            "name": row["name"], "owner": row["owner"], "ref": ref, "mine": mine,
            "mapping": row["mapping"], "state": info.get("state", row["state"]),
            "stale": bool(info.get("stale")),
            "stale_reason": one_line(str(freshness.get("reason") or "")),
            "rows": info.get("rows", row["rows"]), "bytes": info.get("bytes", row["bytes"]),
            "hits": info.get("hits", row["hits"]), "pinned": info.get("pinned", row["pinned"]),
            "memory_only": info.get("memory_only", row["memory_only"]),
            "export": info.get("export"), "shared_with": list(info.get("shared_with") or []),
            "tier": info.get("tier"), "version": info.get("version"),
            "error": one_line(str(info.get("error") or (error or ""))),
            "denied": isinstance(error, AccessDenied),
            "progress": job.progress if job is not None else _with_rate(info.get("progress")),
            "job": job.as_json() if job is not None else None,
        }

    # -- changes -------------------------------------------------------------------------------
    def map(self, name: Any, source: Any, schema: Any, table: Any) -> dict[str, Any]:
        """Map a table as a dataset called ``name`` (no rows move)."""
        name = _text(name, "name")
        problem = name_error(name)
        if problem:
            raise InvalidMapping(problem)
        ref = self._ref(source, schema, table)
        info = self.warehouse.map(name, ref).info()
        return {"name": name, "ref": ref, "state": info["state"]}

    def _handle(self, name: Any, owner: Any, *, must_own: bool) -> Dataset:
        name = _text(name, "dataset")
        owner = _text(owner, "owner", required=False)
        me = self.user()
        if owner in (None, me):
            return Dataset(self.warehouse, name)
        if must_own:
            raise AccessDenied(f"only {owner} can change {owner}/{name}")
        return Dataset(self.warehouse, name, owner)

    def act(self, action: Any, name: Any, owner: Any = None,
            args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one of ACTIONS on a dataset: quick ones now, long ones as a job."""
        if action not in ACTIONS:
            raise BadRequest(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        as_job, must_own = ACTIONS[action]
        dataset = self._handle(name, owner, must_own=must_own)
        dataset.info()  # UnknownDataset / AccessDenied now, not later in a job
        args = args if isinstance(args, dict) else {}
        ref = f"{dataset.owner}/{dataset.name}" if dataset.owner else dataset.name
        if as_job:
            work = self._job_work(action, dataset, args)
            return {"job": self.jobs.start(action, ref, work).as_json()}
        if action == "evict":
            dataset.evict()
        elif action in ("pin", "unpin"):
            dataset.pin(action == "pin")
        else:
            who = self._grantee(args)
            grants = (dataset.share(**who) if action == "share" else dataset.unshare(**who))
            return {"dataset": ref, "shared_with": grants}
        return {"dataset": ref, "state": dataset.info()["state"]}

    @staticmethod
    def _grantee(args: dict[str, Any]) -> dict[str, str]:
        user = _text(args.get("user"), "user", required=False)
        role = _text(args.get("role"), "role", required=False)
        if (user is None) == (role is None):
            raise BadRequest("share with a user or a role (one of them)")
        return {"user": user} if user else {"role": role}

    def export_path(self, path: Any) -> str:
        """Where an export from the panel goes: a local client writes it itself, so it must
        land inside the Jupyter server's root folder; a remote server confines it itself."""
        path = _text(path, "path")
        if not getattr(self.warehouse._backend, "writes_exports", False):
            return path
        target = (self.root_dir / path).resolve()
        if not target.is_relative_to(self.root_dir):
            raise AccessDenied(f"the panel exports only inside the Jupyter root folder "
                               f"({self.root_dir}); {path!r} is outside it")
        return str(target)

    def _job_work(self, action: str, dataset: Dataset,
                  args: dict[str, Any]) -> Callable[[Job], dict[str, Any] | None]:
        if action == "export":
            path = self.export_path(args.get("path"))

            def export(job: Job) -> dict[str, Any]:
                result = dataset.export(path, progress=job.report)
                job.message = f"exported {result.rows:,} rows to {result.path}"
                return {"path": str(result.path), "rows": result.rows}
            return export

        def materialize(job: Job) -> dict[str, Any]:
            getattr(dataset, action)(progress=job.report)
            info = dataset.info()
            rows = f", {info['rows']:,} rows" if info["rows"] is not None else ""
            job.message = (f"{dataset.name} is {info['state']}" if action == "cache" else
                           f"{dataset.name} refreshed: {info['state']}{rows}")
            return {"state": info["state"], "rows": info["rows"], "bytes": info["bytes"]}
        return materialize

    def guard(self, exc: BaseException) -> None:
        """After a failed call: forget a connection whose server went away."""
        if isinstance(exc, ServerUnavailable):
            self.forget_connection()


def _with_rate(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """A materialization's progress as ``info()`` reports it (one started elsewhere, e.g. in a
    notebook), in the shape of a job's."""
    if not progress:
        return None
    seconds = progress.get("seconds") or 0
    rate = progress.get("bytes", 0) / 1e6 / seconds if seconds > 0 else 0.0
    return {**progress, "mb_per_s": round(rate, 2), "done": False}


def _safe_info(dataset: Dataset) -> tuple[dict[str, Any] | None, Exception | None]:
    try:
        return dict(dataset.info()), None
    except LdwError as exc:  # one dataset that cannot answer must not hide the others
        return None, exc
