"""The Ray backend's version holder: a detached actor that owns every object of every version,
so versions outlive the ldw server and the client drivers that made or read them.

It runs in the Ray cluster (on the head node); the server's :class:`~ldw.storage.ray_store.RayStore`
drives it, and in-cluster clients redeem tickets at it (:mod:`ldw.storage.ray_reader`).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from typing import Any

import numpy as np

from ldw.storage.ray_common import ray
from ldw.storage.ray_tasks import error_info, read_partition, warm

__all__ = ["VersionHolder"]


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
            ray.remote(warm).options(scheduling_strategy="SPREAD", num_cpus=1).remote()

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
            gens.append(ray.remote(read_partition).options(
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
                    return {"batches": arrived, "done": True, "error": error_info(exc)}
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
