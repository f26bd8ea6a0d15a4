"""Types shared by both ends of ldw: the client, the server, the engine and the transports.

One place for the vocabulary the wire carries (dataset states, storage tiers, progress), so no
module re-declares a result shape or spells a state as a bare string of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DatasetState", "Progress", "Tier"]


class DatasetState(StrEnum):
    """Where a dataset is in its life; the allowed moves are in :mod:`ldw.lifecycle`."""

    MAPPED = "mapped"              # defined, nothing read yet
    MATERIALIZING = "materializing"  # a source read is writing a new version
    CACHED = "cached"              # its current version is in the memory tier
    SPILLED = "spilled"            # its current version is in the disk tier
    EVICTED = "evicted"            # its version was dropped; the next read recomputes it
    LOST = "lost"                  # a memory-only version is gone; only refresh() brings it back
    FAILED = "failed"              # the first read failed; the next read tries again


class Tier(StrEnum):
    """The store tier a version lives in."""

    MEMORY = "memory"
    DISK = "disk"


@dataclass(frozen=True)
class Progress:
    """What a running materialization reports after each batch."""

    dataset: str
    rows: int
    bytes: int
    seconds: float
    done: bool = False

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
