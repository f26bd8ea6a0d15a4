"""``ldw server reload``: a running engine takes new sources, policies, users and ``[refresh]``
rules from its configuration without a restart.

The cache, the catalog and every dataset stay. A dataset whose owner's effective policy the new
policies change is re-planned on its next access (its old bytes go), as after any policy change;
grants and streams are re-checked as always. ``[server]`` settings (folders, listen address,
limits) are only read at start: a reload reports those that differ and leaves them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ldw.config import RELOADABLE, Settings
from ldw.governance.policies import Governance

if TYPE_CHECKING:
    from ldw.engine.facade import Engine

__all__ = ["reload_engine"]

log = logging.getLogger("ldw.engine")


def restart_needed(running: Settings, new: Settings) -> list[str]:
    """The ``[server]`` settings ``new`` would change: they take effect only on a restart."""
    return sorted(f.name for f in dataclasses.fields(Settings) if f.name not in RELOADABLE
                  and getattr(running, f.name) != getattr(new, f.name))


def reload_engine(engine: Engine, new: Settings) -> dict[str, Any]:
    """Apply the reloadable part of ``new`` to ``engine``; what changed, as a report. A bad
    policy or user table raises ``ConfigError`` before anything changes."""
    running = engine.settings
    checked = Governance(new.policies, new.users)  # validates, or raises: nothing changed yet
    merged = dataclasses.replace(running, **{k: getattr(new, k) for k in RELOADABLE})
    old, now = running.sources, merged.sources
    changed = sorted(n for n in old.keys() & now.keys() if old[n] != now[n])
    removed = sorted(old.keys() - now.keys())
    engine.governance.adopt(checked)
    for part in (engine, engine.sources_, engine.datasets_, engine.admin, engine.freshness,
                 engine.cache, engine.federation):
        part.settings = merged
    engine.sources_.forget(changed + removed)  # the next use opens the new definition
    report = {"config": str(merged.config_path) if merged.config_path else None,
              "sources": sorted(now), "added": sorted(now.keys() - old.keys()),
              "removed": removed, "changed": changed, "policies": len(checked.policies),
              "users": sorted(merged.users), "restart_needed": restart_needed(running, new)}
    log.info("configuration reloaded: %s", report)
    return report
