"""Long panel actions (cache, refresh, export) run as jobs the panel polls for progress.

A job runs in a daemon thread: a Jupyter server that stops mid-materialization does not wait
for the source read, and the ldw server cancels the read when the connection drops. One job per
dataset at a time; finished jobs are kept for a while so the panel can say how they ended.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ldw.errors import LdwError
from ldw.extension.display import one_line
from ldw.types import Progress

__all__ = ["Job", "JobBusy", "Jobs"]

KEEP_SECONDS = 120.0  # how long a finished job stays listed

log = logging.getLogger("ldw.extension.lab")


class JobBusy(RuntimeError):
    """A job for that dataset is already running (the panel answers 409)."""


@dataclass
class Job:
    """One action on one dataset and how far it got."""

    id: int
    action: str
    dataset: str  # "name" or "owner/name"
    state: str = "running"  # running | done | failed
    message: str = ""
    progress: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None

    def report(self, p: Progress) -> None:
        """An ``ldw.Progress`` callback: keep the last report."""
        self.progress = {"rows": p.rows, "bytes": p.bytes, "seconds": round(p.seconds, 3),
                         "mb_per_s": round(p.mb_per_s, 2), "done": p.done}

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "dataset": self.dataset,
                "state": self.state, "message": self.message, "progress": self.progress,
                "started": self.started, "finished": self.finished, "result": self.result}


class Jobs:
    """The running and recently finished jobs of one panel (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)

    def start(self, action: str, dataset: str,
              work: Callable[[Job], dict[str, Any] | None]) -> Job:
        """Run ``work(job)`` in a daemon thread; JobBusy if ``dataset`` has a running job."""
        with self._lock:
            self._forget_old()
            if any(j.dataset == dataset and j.state == "running" for j in self._jobs.values()):
                raise JobBusy(f"{dataset} is busy with another action; wait for it to finish")
            job = Job(next(self._ids), action, dataset)
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, work), daemon=True,
                         name=f"ldw-panel-{action}-{dataset}").start()
        return job

    @staticmethod
    def _run(job: Job, work: Callable[[Job], dict[str, Any] | None]) -> None:
        try:
            job.result = work(job)
            job.state = "done"
        except LdwError as exc:
            job.state, job.message = "failed", one_line(f"{type(exc).__name__}: {exc}")
        except Exception:  # never a lost thread: the panel shows that it failed
            log.exception("ldw panel: %s of %s failed", job.action, job.dataset)
            job.state, job.message = "failed", "internal error (see the Jupyter server's log)"
        finally:
            job.finished = time.time()

    def _forget_old(self) -> None:
        now = time.time()
        for key in [k for k, j in self._jobs.items()
                    if j.finished is not None and now - j.finished > KEEP_SECONDS]:
            del self._jobs[key]

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            self._forget_old()
            return [j.as_json() for j in self._jobs.values()]

    def running(self, dataset: str) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values()
                         if j.dataset == dataset and j.state == "running"), None)
