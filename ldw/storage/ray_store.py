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
(:class:`~ldw.storage.base.VersionLost`) and the engine recomputes it from the mapping on that
access.

Capacity: without ``ray_address`` ldw starts its own single-node Ray with an object store of
``memory_limit`` plus headroom and Ray's object spilling turned off; ldw's own accounting keeps
within ``memory_limit`` (spilling least recently used versions to ``spill_dir`` on the server,
as Arrow files, like the local backend). On a cluster whose configuration spills objects to
disk, memory-only datasets are refused (:class:`~ldw.errors.PolicyViolation`).

The code is split by the process it runs in: :mod:`~ldw.storage.ray_tasks` (Ray workers),
:mod:`~ldw.storage.ray_holder` (the holder actor), :mod:`~ldw.storage.ray_reader` (a client in
the cluster) and this module (the server's :class:`RayStore`).

Trust: anyone who can join the Ray cluster can run code in it, and so read every object and the
source credentials handed to partition tasks. Cluster membership is a trust boundary: run
ldw's cluster for one team, on a private network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.ipc as ipc

import ldw.errors as errors
from ldw.config import Settings
from ldw.errors import LdwError, PolicyViolation, ServerUnavailable
from ldw.storage.base import (
    DISK,
    MEMORY,
    Descriptors,
    MakeRoom,
    MemoryBudget,
    ProgressCallback,
    Version,
    VersionLost,
    VersionStore,
    new_version_id,
    storage_schema,
)
from ldw.storage.local import Store
from ldw.storage.ray_common import (
    GET_TIMEOUT,
    NAMESPACE,
    actor_name,
    ipc_payload,
    lost_errors,
    ray,
    require_ray,
    table_from_refs,
)
from ldw.storage.ray_holder import VersionHolder
from ldw.storage.ray_tasks import at_least_one, mask_and_store, raise_error, task_specs
from ldw.types import Progress

if TYPE_CHECKING:
    from ldw.governance.masks import Mask

__all__ = ["RayStore"]

log = logging.getLogger("ldw.ray")

HEADROOM = 64 << 20  # object store bytes beyond memory_limit for Ray's own objects
POLL_SECONDS = 0.2
TICKET_SECONDS = 60.0
HEAD_RESOURCE = "node:__internal_head__"  # Ray gives this resource to the head node only


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


class RayStore(VersionStore):
    """The version store of ``backend = "ray"``: the memory tier in Ray, the disk tier local.

    Implements :class:`~ldw.storage.base.VersionStore`, with partition reads that run as Ray
    tasks (:meth:`write_partitions`) and tickets for in-cluster clients (:meth:`ticket`).
    """

    distributed = True

    def __init__(self, settings: Settings, disk_root: Path, *, key: str,
                 ephemeral: bool = False) -> None:
        require_ray()
        self.ephemeral = ephemeral
        self.owns_cluster = False
        self._connect(settings, settings.memory_limit)
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
        self.nodes: dict[str, list[str]] = {}  # dataset -> nodes whose tasks read its last load
        self.budget = MemoryBudget(settings.memory_limit, self._held_bytes())
        self.holder.warm.remote(int(ray.cluster_resources().get("CPU", 1)))

    def _held_bytes(self) -> int:
        held = ray.get(self.holder.versions.remote(), timeout=GET_TIMEOUT)
        return sum(int(v.get("bytes", 0)) for v in held.values())

    def _connect(self, settings: Settings, memory_limit: int) -> None:
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
        ray.init(address="local", object_store_memory=max(memory_limit + HEADROOM, 80 << 20),
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

    def check_memory_only(self, dataset: str) -> None:
        """Refuse a memory-only dataset on a cluster that would spill its objects to disk."""
        if self.spilling:
            raise PolicyViolation(
                f"{dataset} is memory-only, but the Ray cluster at {self.address} spills "
                "objects to disk (automatic_object_spilling_enabled); start the cluster with "
                "ray start --system-config='{\"automatic_object_spilling_enabled\": false}' "
                "or let ldw start its own Ray (no ray_address)")

    # -- accounting ----------------------------------------------------------------------------
    def files(self, tier: str) -> list[Path]:
        if tier == DISK:
            return self.disk.files(MEMORY)
        held = ray.get(self.holder.versions.remote(), timeout=GET_TIMEOUT)
        return [self._path(meta["dataset"], vid) for vid, meta in held.items()]

    def _path(self, dataset: str, version_id: str) -> Path:
        return Path("ray") / self.name / dataset / version_id

    # -- writing -------------------------------------------------------------------------------
    def write(self, dataset: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
              progress: ProgressCallback | None = None,
              make_room: MakeRoom | None = None) -> Version:
        """Batches read by the server, put into objects owned by the holder."""
        stored = storage_schema(schema)
        job = new_version_id()
        started = time.perf_counter()
        rows = reserved = 0
        try:
            for batch in at_least_one(batches, stored):
                batch = mask_and_store(batch, stored, {}, None)
                payload = ipc_payload(batch)
                self.budget.reserve(payload.nbytes, make_room, dataset, written=reserved)
                reserved += payload.nbytes
                ray.get(self.holder.put.remote(job, payload), timeout=GET_TIMEOUT)
                rows += batch.num_rows
                if progress:
                    progress(Progress(dataset, rows, reserved, time.perf_counter() - started))
            return self._publish(job, dataset, rows, reserved, started, progress)
        except BaseException:
            self.budget.release(reserved)
            with contextlib.suppress(Exception):
                self.holder.cancel.remote(job)
            raise

    def write_partitions(self, dataset: str, connector: Any, plan: Any, snapshot: Any,
                         schema: pa.Schema, *, masks: Mapping[str, Mask],
                         mask_key: bytes | None,
                         progress: ProgressCallback | None = None,
                         make_room: MakeRoom | None = None,
                         cancel: threading.Event | None = None) -> Version:
        """Run every partition query as a Ray task spread over the nodes, importing the
        snapshot this server exported, masks applied in the task (before the object store);
        account every batch as it lands. ``nodes[dataset]`` then lists the node ids that read."""
        specs = task_specs(connector, plan, snapshot.info.get("ldw_snapshot"), schema, masks,
                           mask_key)
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
                    self.budget.reserve(meta["bytes"], make_room, dataset, written=reserved)
                    reserved += meta["bytes"]
                    rows += meta["rows"]
                    nodes.append(meta["node"])
                    if progress:
                        progress(Progress(dataset, rows, reserved,
                                          time.perf_counter() - started))
                if step["error"] is not None:
                    raise_error(step["error"])
                if step["done"]:
                    break
            if not nodes:  # no partition had a row: one empty batch carries the schema
                ray.get(self.holder.put.remote(job, ipc_payload(
                    pa.RecordBatch.from_pylist([], schema=specs[0]["schema"]))),
                    timeout=GET_TIMEOUT)
            self.nodes[dataset] = sorted(set(nodes))
            return self._publish(job, dataset, rows, reserved, started, progress)
        except BaseException:
            self.budget.release(reserved)
            with contextlib.suppress(Exception):
                ray.get(self.holder.cancel.remote(job), timeout=10)
            raise

    def _publish(self, job: str, dataset: str, rows: int, nbytes: int, started: float,
                 progress: ProgressCallback | None) -> Version:
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
        return replace(version, path=written.path, tier=DISK, bytes=version.bytes, parts=(),
                       keep=None)

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
            self.budget.release(int(held[version.version_id].get("bytes", 0)))

    def remove_orphan(self, path: Path) -> None:
        if path.parts[:2] == ("ray", self.name):
            ray.get(self.holder.drop.remote(path.name), timeout=GET_TIMEOUT)
            self.budget.reset(self._held_bytes())
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
            return table_from_refs(self.refs(version))
        except lost_errors() as exc:
            log.warning("version %s of %s was lost in the Ray cluster (%s)",
                        version.version_id, version.dataset, type(exc).__name__)
            raise VersionLost(version.version_id) from None
        except ray.exceptions.GetTimeoutError:
            raise LdwError(f"the Ray cluster did not deliver {version.dataset} within "
                           f"{GET_TIMEOUT:g} s; check it with `ray status` and retry") from None

    def open_readonly(self, version: Version) -> Descriptors:
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
        return Descriptors([fd])

    def ticket(self, version: Version) -> dict[str, Any]:
        """A single-use ticket an in-cluster client redeems at the holder (see
        :func:`~ldw.storage.ray_reader.read_ticket`); VersionLost if its objects are gone."""
        if version.tier != MEMORY:
            raise LdwError(f"{version.dataset} is in the disk tier; attach it through the "
                           "server instead")
        self.refs(version)
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
