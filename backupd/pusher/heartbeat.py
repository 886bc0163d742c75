"""The daemon's heartbeat: ``<state_dir>/pusher.heartbeat.json``, rewritten every ``HEARTBEAT_S``.

``backupd status`` and the container HEALTHCHECK read it to tell whether a
``backupd watch`` is alive (a fresh timestamp and a live pid) and what it
is doing in an HA group: its role (``leader``, ``standby``, or ``none``
without HA), the lease epoch, the journal backlog it last counted and the
changes of each source it holds in memory, not yet journaled.

The file is one JSON object (written to a temporary name, then renamed, so
a reader never sees half of it)::

    {"pid": 1234, "at_ns": 1764700000000000000, "node": "a", "role": "leader",
     "epoch": 3, "journal_backlog": 0, "unjournaled": {"/src": 0}}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backupd.process import pid_alive

HEARTBEAT_FILE = "pusher.heartbeat.json"
HEARTBEAT_S = 1.0  # how often the daemon rewrites it
STALE_S = 10.0  # older than this: the daemon is taken as dead (hung or killed)
ROLES = ("leader", "standby", "none")


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat of the daemon.

    ``at_ns``: wall clock, nanoseconds since the epoch. ``journal_backlog``:
    rows of the HA group's journal at the last count (None without HA or
    before the first count). ``unjournaled``: per source path, changes held
    in memory that are neither journaled nor spilled.
    """

    pid: int
    at_ns: int
    role: str
    node: str | None = None
    epoch: int | None = None
    journal_backlog: int | None = None
    unjournaled: dict[str, int] = field(default_factory=dict)


def heartbeat_path(state_dir: Path) -> Path:
    """Where the heartbeat of the daemon using ``state_dir`` lives."""
    return Path(state_dir) / HEARTBEAT_FILE


def write_heartbeat(state_dir: Path, beat: Heartbeat) -> None:
    """Replace the heartbeat file atomically (no fsync: it is rewritten every second).

    Raises:
        OSError: ``state_dir`` is not writable.
    """
    path = heartbeat_path(state_dir)
    tmp = path.with_name(f".{HEARTBEAT_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(beat)))
    os.replace(tmp, path)


def read_heartbeat(state_dir: Path) -> Heartbeat | None:
    """The last heartbeat, None if there is none or it cannot be read."""
    try:
        doc = json.loads(heartbeat_path(state_dir).read_text())
        return Heartbeat(
            pid=int(doc["pid"]),
            at_ns=int(doc["at_ns"]),
            role=str(doc["role"]),
            node=doc.get("node"),
            epoch=doc.get("epoch"),
            journal_backlog=doc.get("journal_backlog"),
            unjournaled={str(k): int(v) for k, v in (doc.get("unjournaled") or {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_alive(beat: Heartbeat | None, now_ns: int | None = None, stale_s: float = STALE_S) -> bool:
    """True if ``beat`` is at most ``stale_s`` old and its pid is running."""
    if beat is None:
        return False
    now_ns = time.time_ns() if now_ns is None else now_ns
    return (now_ns - beat.at_ns) / 1e9 <= stale_s and pid_alive(beat.pid)
