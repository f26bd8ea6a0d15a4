"""The Ray backend: dataset versions in Ray's distributed object store (``backend = "ray"``).

A version is a list of Ray objects, each one Arrow IPC stream (one record batch, strings as
``string_view``) held as raw bytes. Every object is *owned* by a detached named actor (the
:class:`VersionHolder`, ``ldw-store-<hash>`` in namespace ``ldw``), so versions outlive the ldw
server and client drivers that made or read them; the catalog, policies and audit stay in the
server. Reading a version is ``ray.get`` of its objects: on the node that holds them the bytes
are mapped from the node's shared-memory object store, without a copy.

Partitions of a PostgreSQL read run as Ray tasks (one per partition, spread over the nodes),
launched by the holder so that it owns what they yield. Each task opens its own connection,
imports the read's exported snapshot, applies the keyed-hash masks and streams batches into the
object store; the server only sees sizes, which it accounts against ``memory_limit`` batch by
batch (each task runs at most one batch ahead: ``_generator_backpressure_num_objects``). Other
sources, and datasets defined by SQL over datasets, are read by the server as in the local
backend and put into the object store by the holder.

Loss: the tasks run with ``max_retries=0``, so Ray never re-runs a partition against a newer
source snapshot on its own; an object lost with its node makes the whole version lost
(:class:`~ldw.store.VersionLost`) and the engine recomputes it from the mapping on that access.

Capacity: without ``ray_address`` ldw starts its own single-node Ray with an object store of
``memory_limit`` plus headroom and Ray's object spilling turned off; ldw's own accounting keeps
within ``memory_limit`` (spilling least recently used versions to ``spill_dir`` on the server,
as Arrow files, like the local backend). On a cluster whose configuration spills objects to
disk, memory-only datasets are refused (:class:`~ldw.errors.PolicyViolation`).

Trust: anyone who can join the Ray cluster can run code in it, and so read every object and the
source credentials handed to partition tasks. Cluster membership is a trust boundary: run
ldw's cluster for one team, on a private network.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

import ldw.errors as errors
from ldw.config import Settings, SourceConfig
from ldw.errors import ConfigError, LdwError, PolicyViolation, ServerUnavailable
from ldw.masks import Mask, mask_batch
from ldw.secrets import Secret, redact
from ldw.store import (
    DISK,
    MEMORY,
    Progress,
    Store,
    Version,
    VersionLost,
    new_version_id,
    storage_schema,
)

try:
    import ray
    import ray.exceptions
except ImportError:  # the ``ray`` extra is not installed
    ray = None

__all__ = ["NAMESPACE", "RayStore", "VersionHolder", "actor_name", "read_ticket",
           "require_ray"]

log = logging.getLogger("ldw.ray")

NAMESPACE = "ldw"
HEADROOM = 64 << 20  # object store bytes beyond memory_limit for Ray's own objects
POLL_SECONDS = 0.2
GET_TIMEOUT = 120.0  # seconds a read of a version may wait for the cluster
TICKET_SECONDS = 60.0
HEAD_RESOURCE = "node:__internal_head__"  # Ray gives this resource to the head node only


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    if ray is None:
        raise ConfigError("backend = 'ray' needs Ray, which is not installed; "
                          "install it with pip install 'ldw[ray]'")
    return ray


def actor_name(key: str) -> str:
    """The holder's name for a server identity (its catalog URL) or an ephemeral engine."""
    return "ldw-store-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _lost_errors() -> tuple[type[BaseException], ...]:
    return (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError,
            ray.exceptions.ObjectFetchTimedOutError, ray.exceptions.RayActorError)


# -- the partition task ---------------------------------------------------------------------------
class _TokenSnapshot:
    """Stands in for the server's snapshot connection: only its exported snapshot id travels."""

    def __init__(self, token: str | None) -> None:
        self.info = {"ldw_snapshot": token} if token else {}


@dataclass(frozen=True)
class _TaskSource(SourceConfig):
    """A source config whose password was resolved by the server (tasks cannot read its env)."""

    revealed: str | None = None

    def password(self) -> Secret | None:
        return Secret(self.revealed) if self.revealed is not None else None

    def __reduce__(self):  # plain fields only; the password is no Secret while it travels
        return (_TaskSource, (self.name, self.url, None, None, dict(self.options),
                              self.revealed))


def _at_least_one(batches: Iterable[pa.RecordBatch], schema: pa.Schema
                  ) -> Iterator[pa.RecordBatch]:
    """The batches, or one empty batch when there are none (it carries the schema)."""
    empty = True
    for batch in batches:
        empty = False
        yield batch
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=schema)


def _ipc_payload(batch: pa.RecordBatch) -> np.ndarray:
    """One batch as Arrow IPC stream bytes (a uint8 array: Ray stores it as raw bytes)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return np.frombuffer(sink.getvalue(), dtype=np.uint8)


def _mask_and_store(batch: pa.RecordBatch, stored: pa.Schema, masks: Mapping[str, Mask],
                    key: bytes | None) -> pa.RecordBatch:
    batch = mask_batch(batch, masks, key)
    if batch.schema != stored:
        batch = batch.cast(stored)
    return batch


def _read_partition(spec: dict[str, Any]) -> Iterator[Any]:
    """A Ray task: read one partition on a connection of its own; yield (meta, payload) pairs."""
    from ldw.connectors import ReadPlan, SourceQuery, connector_for

    connector = connector_for(spec["source"], batch_rows=spec["batch_rows"])
    plan = ReadPlan([SourceQuery(spec["sql"])], spec["columns"], spec["tables"], spec["tag"])
    node = ray.get_runtime_context().get_node_id()
    cancel = threading.Event()
    batches = connector.stream(plan, cancel, _TokenSnapshot(spec["token"]))
    try:
        for batch in batches:
            batch = _mask_and_store(batch, spec["schema"], spec["masks"], spec["mask_key"])
            payload = _ipc_payload(batch)
            yield {"rows": batch.num_rows, "bytes": int(payload.nbytes), "node": node}
            yield payload
    finally:
        cancel.set()
        batches.close()
        connector.close()


def _warm() -> str:
    """A no-op task that starts a worker process and imports the connectors, so the first
    partition read does not pay for it (Ray reuses the holder's worker processes)."""
    import ldw.connectors  # noqa: F401

    return ray.get_runtime_context().get_node_id()


def _error_info(exc: BaseException) -> dict[str, str]:
    """An error crossing from the cluster: its ldw class name and message (never a traceback)."""
    cause = exc
    if ray is not None and isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
    if isinstance(cause, LdwError):
        return {"type": type(cause).__name__, "message": str(cause)}
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return {"type": "SourceError", "message": redact(
        f"a partition read failed in the Ray cluster: {type(cause).__name__}: {first}")}


def _raise_error(info: dict[str, str]) -> None:
    cls = getattr(errors, info.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, LdwError)):
        cls = errors.SourceError
    raise cls(info.get("message", "a read in the Ray cluster failed"))


# -- the holder actor -----------------------------------------------------------------------------
class VersionHolder:
    """Owns every object of every version (a detached actor: it outlives its drivers).

    It launches the partition tasks (so it owns their results), keeps each published version's
    object refs, and hands them out on the server's say-so: to the server, or to an in-cluster
    client redeeming a single-use ticket the server issued after checking access.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, dict[str, Any]] = {}
        self._tickets: dict[str, tuple[str, float]] = {}

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def warm(self, workers: int) -> None:
        for _ in range(workers):  # not awaited: they run while the server gets ready
            ray.remote(_warm).options(scheduling_strategy="SPREAD", num_cpus=1).remote()

    # writing
    def start(self, job: str, specs: list[dict[str, Any]], options: dict[str, Any]) -> int:
        """Launch one task per partition, dealt round-robin over the live nodes with CPUs
        (soft affinity: a busy or vanished node's share runs elsewhere). Ray's own SPREAD is
        best effort and, on a loaded cluster, may put every partition on one node."""
        from ray.util.scheduling_strategies import (
            NodeAffinitySchedulingStrategy,
        )

        nodes = sorted(n["NodeID"] for n in ray.nodes()
                       if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
        gens = []
        for index, spec in enumerate(specs):
            placed = dict(options)
            if nodes:
                placed["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                    nodes[index % len(nodes)], soft=True)
            gens.append(ray.remote(_read_partition).options(
                num_returns="streaming", max_retries=0,
                _generator_backpressure_num_objects=2, **placed).remote(spec))
        with self._lock:
            self._jobs[job] = {"gens": gens, "open": list(range(len(gens))), "refs": []}
        return len(gens)

    def poll(self, job: str, timeout: float) -> dict[str, Any]:
        """Batches that arrived since the last poll: their sizes (the server accounts them)."""
        with self._lock:
            state = self._jobs.get(job)
        if state is None:
            return {"batches": [], "done": True, "error": {"type": "LdwError",
                                                           "message": "unknown read"}}
        active = [state["gens"][i] for i in state["open"]]
        if not active:
            return {"batches": [], "done": True, "error": None}
        ready, _ = ray.wait(active, num_returns=1, timeout=timeout, fetch_local=False)
        arrived: list[dict[str, Any]] = []
        for gen in ready:
            index = state["gens"].index(gen)
            while True:  # everything this partition has ready now
                try:
                    meta = ray.get(next(gen))
                    payload = next(gen)
                except StopIteration:
                    state["open"].remove(index)
                    break
                except Exception as exc:
                    self.cancel(job)
                    return {"batches": arrived, "done": True, "error": _error_info(exc)}
                state["refs"].append(payload)
                arrived.append(meta)
                if not ray.wait([gen], num_returns=1, timeout=0, fetch_local=False)[0]:
                    break
        return {"batches": arrived, "done": not state["open"], "error": None}

    def put(self, job: str, payload: np.ndarray) -> None:
        """A batch the server read itself, copied into an object the holder owns."""
        ref = ray.put(np.array(payload, copy=True))
        with self._lock:
            self._jobs.setdefault(job, {"gens": [], "open": [], "refs": []})["refs"].append(ref)

    def cancel(self, job: str) -> None:
        with self._lock:
            state = self._jobs.pop(job, None)
        for gen in (state or {}).get("gens", []):
            with contextlib.suppress(Exception):
                ray.cancel(gen, force=False)

    def publish(self, job: str, version_id: str, meta: dict[str, Any]) -> None:
        with self._lock:
            state = self._jobs.pop(job)
            self._versions[version_id] = {**meta, "refs": state["refs"]}

    # reading
    def refs(self, version_id: str) -> list | None:
        with self._lock:
            entry = self._versions.get(version_id)
        return None if entry is None else list(entry["refs"])

    def versions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {vid: {k: v for k, v in e.items() if k != "refs"}
                    for vid, e in self._versions.items()}

    def drop(self, version_id: str) -> None:
        with self._lock:
            self._versions.pop(version_id, None)
            self._tickets = {t: v for t, v in self._tickets.items() if v[0] != version_id}

    def grant(self, version_id: str, seconds: float) -> str:
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            self._tickets = {t: v for t, v in self._tickets.items() if v[1] > now}
            self._tickets[ticket] = (version_id, now + seconds)
        return ticket

    def redeem(self, ticket: str) -> list | None:
        with self._lock:
            version_id, expires = self._tickets.pop(ticket, ("", 0.0))
        if expires < time.time():
            return None
        return self.refs(version_id)


def _table_from_refs(refs: list) -> pa.Table:
    """``ray.get`` every object (zero-copy on the node that holds it) and read the IPC bytes
    (every version has at least one object, so the schema is always there)."""
    return pa.concat_tables([ipc.open_stream(pa.py_buffer(payload)).read_all()
                             for payload in ray.get(refs, timeout=GET_TIMEOUT)])


def read_ticket(ticket: dict[str, Any]) -> pa.Table:
    """For a client inside the cluster: redeem a ticket from the server's ``ray_attach``
    operation at the holder and map the version from this node's object store.

    The process must be a Ray driver of the same cluster (``ray.init(address=...)``).
    """
    require_ray()
    if not ray.is_initialized():
        ray.init(address=ticket["address"], namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    holder = ray.get_actor(ticket["actor"], namespace=NAMESPACE)
    refs = ray.get(holder.redeem.remote(ticket["ticket"]), timeout=GET_TIMEOUT)
    if refs is None:
        raise errors.AccessDenied("unknown, used or expired ticket; attach again")
    return _table_from_refs(refs)


# -- the store -------------------------------------------------------------------------------------
def _probe(address: str, timeout: float = 5.0) -> str | None:
    """Why a ``host:port`` (or ``ray://host:port``) Ray address takes no TCP connection, or
    None if it does or the address names no port (``auto``: Ray finds the cluster itself)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


class RayStore:
    """The version store of ``backend = "ray"``: the memory tier in Ray, the disk tier local.

    Offers what :class:`~ldw.store.Store` offers the engine (write, spill, adopt, delete,
    open_table, open_readonly, files, used_bytes), plus :meth:`write_tasks` for partition reads
    that run as Ray tasks.
    """

    distributed = True

    def __init__(self, settings: Settings, disk_root: Path, *, key: str,
                 ephemeral: bool = False) -> None:
        require_ray()
        self.memory_limit = settings.memory_limit
        self.ephemeral = ephemeral
        self.owns_cluster = False
        self._connect(settings)
        self.name = actor_name(key)
        self.address = ray.get_runtime_context().gcs_address
        self.spilling = self._cluster_spills()
        try:  # on the head node: the one node whose loss ends the cluster anyway
            self.holder = ray.remote(VersionHolder).options(
                name=self.name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                num_cpus=0, max_concurrency=32, max_restarts=0,
                resources={HEAD_RESOURCE: 0.001}).remote()
            ray.get(self.holder.node.remote(), timeout=GET_TIMEOUT)
        except Exception as exc:
            raise ServerUnavailable(f"could not start ldw's version holder in the Ray cluster "
                                    f"({type(exc).__name__}); check the cluster with "
                                    "`ray status`") from None
        # the disk tier: Arrow files on the server, as in the local backend
        self.disk = Store(disk_root, disk_root, memory_limit=1 << 62)
        self.roots = {MEMORY: disk_root, DISK: disk_root}
        self._lock = threading.Lock()
        self.nodes: dict[str, list[str]] = {}  # dataset -> nodes whose tasks read its last load
        held = ray.get(self.holder.versions.remote(), timeout=GET_TIMEOUT)
        self._used = sum(int(v.get("bytes", 0)) for v in held.values())
        self.holder.warm.remote(int(ray.cluster_resources().get("CPU", 1)))

    # reuse the local store's per-batch reservation (same fields: _lock, _used, memory_limit)
    _reserve = Store._reserve
    _release = Store._release

    def _connect(self, settings: Settings) -> None:
        if ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING,
                 "namespace": NAMESPACE}
        if settings.ray_address:
            def unreachable(why: str) -> ServerUnavailable:
                return ServerUnavailable(
                    f"cannot reach the Ray cluster at ray_address = {settings.ray_address!r} "
                    f"({why}); start it (`ray start --head`) or fix ray_address in ldw.toml")

            refused = _probe(settings.ray_address)
            if refused is not None:  # ray.init would retry for minutes before giving up
                raise unreachable(refused)
            try:
                ray.init(address=settings.ray_address, **quiet)
            except Exception as exc:
                raise unreachable(type(exc).__name__) from None
            return
        self.owns_cluster = True
        ray.init(address="local", object_store_memory=max(self.memory_limit + HEADROOM, 80 << 20),
                 include_dashboard=False,
                 _system_config={"automatic_object_spilling_enabled": False}, **quiet)

    @staticmethod
    def _cluster_spills() -> bool:
        try:
            from ray._private.state import state

            config = state.get_system_config()
        except Exception:  # cannot tell: assume Ray's default, which spills
            return True
        return bool(config.get("automatic_object_spilling_enabled", True))

    def task_specs(self, connector: Any, plan: Any, token: str | None, schema: pa.Schema,
                   masks: Mapping[str, Mask], mask_key: bytes | None) -> list[dict[str, Any]]:
        """One task per partition query; the source's password is resolved here, once."""
        source = connector.source
        secret = source.password()
        travelling = _TaskSource(source.name, source.url, None, None, dict(source.options),
                                 secret.reveal() if secret is not None else None)
        masks = {name: mask for name, mask in masks.items() if mask.applied_in_arrow}
        return [{"source": travelling, "batch_rows": connector.batch_rows, "sql": query.sql,
                 "columns": plan.columns, "tables": plan.tables, "tag": plan.tag,
                 "token": token, "schema": storage_schema(schema), "masks": masks,
                 "mask_key": mask_key if masks else None} for query in plan.queries]

    def check_memory_only(self, dataset: str) -> None:
        """Refuse a memory-only dataset on a cluster that would spill its objects to disk."""
        if self.spilling:
            raise PolicyViolation(
                f"{dataset} is memory-only, but the Ray cluster at {self.address} spills "
                "objects to disk (automatic_object_spilling_enabled); start the cluster with "
                "ray start --system-config='{\"automatic_object_spilling_enabled\": false}' "
                "or let ldw start its own Ray (no ray_address)")

    # -- accounting ----------------------------------------------------------------------------
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def files(self, tier: str) -> list[Path]:
        if tier == DISK:
            return self.disk.files(MEMORY)
        held = ray.get(self.holder.versions.remote(), timeout=GET_TIMEOUT)
        return [self._path(meta["dataset"], vid) for vid, meta in held.items()]

    def _path(self, dataset: str, version_id: str) -> Path:
        return Path("ray") / self.name / dataset / version_id

    # -- writing -------------------------------------------------------------------------------
    def write(self, dataset: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
              progress: Callable[[Progress], None] | None = None,
              make_room: Callable[[int], int] | None = None) -> Version:
        """Batches read by the server, put into objects owned by the holder."""
        stored = storage_schema(schema)
        job = new_version_id()
        started = time.perf_counter()
        rows = reserved = 0
        try:
            for batch in _at_least_one(batches, stored):
                batch = _mask_and_store(batch, stored, {}, None)
                payload = _ipc_payload(batch)
                self._reserve(payload.nbytes, make_room, dataset, written=reserved)
                reserved += payload.nbytes
                ray.get(self.holder.put.remote(job, payload), timeout=GET_TIMEOUT)
                rows += batch.num_rows
                if progress:
                    progress(Progress(dataset, rows, reserved, time.perf_counter() - started))
            return self._publish(job, dataset, rows, reserved, started, progress)
        except BaseException:
            self._release(reserved)
            with contextlib.suppress(Exception):
                self.holder.cancel.remote(job)
            raise

    def write_tasks(self, dataset: str, specs: list[dict[str, Any]], *,
                    progress: Callable[[Progress], None] | None = None,
                    make_room: Callable[[int], int] | None = None,
                    cancel: threading.Event | None = None) -> Version:
        """Run partition reads as Ray tasks spread over the nodes; account every batch as it
        lands in the object store. ``nodes[dataset]`` then lists the node ids that read."""
        job = new_version_id()
        started = time.perf_counter()
        rows = reserved = 0
        nodes: list[str] = []
        try:
            ray.get(self.holder.start.remote(job, specs, {"num_cpus": 1}), timeout=GET_TIMEOUT)
            while True:
                if cancel is not None and cancel.is_set():
                    raise errors.Cancelled("the read was cancelled")
                step = ray.get(self.holder.poll.remote(job, POLL_SECONDS), timeout=GET_TIMEOUT)
                for meta in step["batches"]:
                    # the batch is already in the object store: account it, or stop the read
                    self._reserve(meta["bytes"], make_room, dataset, written=reserved)
                    reserved += meta["bytes"]
                    rows += meta["rows"]
                    nodes.append(meta["node"])
                    if progress:
                        progress(Progress(dataset, rows, reserved,
                                          time.perf_counter() - started))
                if step["error"] is not None:
                    _raise_error(step["error"])
                if step["done"]:
                    break
            if not nodes:  # no partition had a row: one empty batch carries the schema
                ray.get(self.holder.put.remote(job, _ipc_payload(
                    pa.RecordBatch.from_pylist([], schema=specs[0]["schema"]))),
                    timeout=GET_TIMEOUT)
            self.nodes[dataset] = sorted(set(nodes))
            return self._publish(job, dataset, rows, reserved, started, progress)
        except BaseException:
            self._release(reserved)
            with contextlib.suppress(Exception):
                ray.get(self.holder.cancel.remote(job), timeout=10)
            raise

    def _publish(self, job: str, dataset: str, rows: int, nbytes: int, started: float,
                 progress: Callable[[Progress], None] | None) -> Version:
        version_id = new_version_id()
        seconds = time.perf_counter() - started
        created = time.time()
        ray.get(self.holder.publish.remote(job, version_id, {
            "dataset": dataset, "rows": rows, "bytes": nbytes, "created": created}),
            timeout=GET_TIMEOUT)
        if progress:
            progress(Progress(dataset, rows, nbytes, seconds, done=True))
        return Version(dataset, version_id, self._path(dataset, version_id), rows, nbytes,
                       created, seconds)

    # -- tiers ---------------------------------------------------------------------------------
    def spill(self, version: Version) -> Version:
        """Copy a version into an Arrow file of the disk tier; drop its objects."""
        table = self.open_table(version)
        written = self.disk.write(version.dataset, table.schema, table.to_batches(),
                                  version_id=version.version_id)
        self.delete(version)
        return replace(version, path=written.path, tier=DISK, bytes=version.bytes)

    def adopt(self, version: Version) -> bool:
        if version.tier == DISK:
            return self.disk.adopt(version)
        held = ray.get(self.holder.versions.remote(), timeout=GET_TIMEOUT)
        meta = held.get(version.version_id)
        return meta is not None and meta.get("rows") == version.rows

    def delete(self, version: Version) -> None:
        if version.tier == DISK:
            self.disk.delete(version)  # also lets go of the disk store's kept mapping
            return
        self.forget(version)

    def forget(self, version: Version) -> None:
        """Drop a memory-tier version's objects (also after they were lost)."""
        held = ray.get(self.holder.versions.remote(), timeout=GET_TIMEOUT)
        ray.get(self.holder.drop.remote(version.version_id), timeout=GET_TIMEOUT)
        if version.version_id in held:
            self._release(int(held[version.version_id].get("bytes", 0)))

    def remove_orphan(self, path: Path) -> None:
        if path.parts[:2] == ("ray", self.name):
            ray.get(self.holder.drop.remote(path.name), timeout=GET_TIMEOUT)
            with self._lock:
                held = ray.get(self.holder.versions.remote(), timeout=GET_TIMEOUT)
                self._used = sum(int(v.get("bytes", 0)) for v in held.values())
            return
        self.disk.remove_orphan(path)

    # -- reading -------------------------------------------------------------------------------
    def refs(self, version: Version) -> list:
        refs = ray.get(self.holder.refs.remote(version.version_id), timeout=GET_TIMEOUT)
        if refs is None:
            raise VersionLost(version.version_id)
        return refs

    def open_table(self, version: Version) -> pa.Table:
        """The version as a table: zero-copy from this node's object store."""
        if version.tier == DISK:
            return self.disk.open_table(version)
        try:
            return _table_from_refs(self.refs(version))
        except _lost_errors() as exc:
            log.warning("version %s of %s was lost in the Ray cluster (%s)",
                        version.version_id, version.dataset, type(exc).__name__)
            raise VersionLost(version.version_id) from None
        except ray.exceptions.GetTimeoutError:
            raise LdwError(f"the Ray cluster did not deliver {version.dataset} within "
                           f"{GET_TIMEOUT:g} s; check it with `ray status` and retry") from None

    def open_readonly(self, version: Version) -> int:
        """A descriptor of the version as an Arrow IPC file: the disk tier's file, or for the
        memory tier an anonymous in-memory copy (for transports that hand out descriptors)."""
        if version.tier == DISK:
            return self.disk.open_readonly(version)
        table = self.open_table(version)
        fd = os.memfd_create(f"ldw-{version.version_id}", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as raw, pa.PythonFile(raw, mode="w") as sink, \
                    ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def ticket(self, version: Version) -> dict[str, Any]:
        """A single-use ticket an in-cluster client redeems at the holder (see read_ticket)."""
        if version.tier != MEMORY:
            raise LdwError(f"{version.dataset} is in the disk tier; attach it through the "
                           "server instead")
        return {"ticket": ray.get(self.holder.grant.remote(version.version_id, TICKET_SECONDS),
                                  timeout=GET_TIMEOUT),
                "actor": self.name, "namespace": NAMESPACE, "address": self.address}

    def close(self) -> None:
        self.disk.close()
        if self.ephemeral:
            with contextlib.suppress(Exception):
                ray.kill(self.holder)
        if self.owns_cluster:
            with contextlib.suppress(Exception):
                ray.shutdown()
