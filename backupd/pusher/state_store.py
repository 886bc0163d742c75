"""Persisted source states (``<state_dir>/sources.sqlite``) and the queue files' names.

One row per source directory: its :class:`SourceState`, why, and when its
last full sync was requested (the schedule counts from there, across restarts).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from backupd.config.pusher_model import SourceConfig, Target, target_key
from backupd.pusher.source_state import SourceState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    updated_ns INTEGER NOT NULL, last_full_request_ns INTEGER);
"""


@dataclass(frozen=True)
class SourceRow:
    """A persisted source state."""

    path: str
    state: SourceState
    reason: str
    updated_ns: int
    last_full_request_ns: int | None


def queue_path(state_dir: Path, source: SourceConfig, target: Target) -> Path:
    """Where the durable queue of one (source, target) pair lives."""
    return Path(state_dir) / f"queue-{target_key(source, target)}.sqlite"


class StateStore:
    """The sources table (one SQLite connection)."""

    def __init__(self, state_dir: Path) -> None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(Path(state_dir) / "sources.sqlite", isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the SQLite connection."""
        self.db.close()

    def load(self, path: Path) -> SourceRow | None:
        """The persisted row of a source, None if never seen."""
        row = self.db.execute(
            "SELECT path, state, reason, updated_ns, last_full_request_ns FROM sources WHERE path = ?",
            (os.fspath(path),),
        ).fetchone()
        return None if row is None else SourceRow(row[0], SourceState(row[1]), row[2], row[3], row[4])

    def save(self, path: Path, state: SourceState, reason: str, now_ns: int) -> None:
        """Persist a source's state and why."""
        self.db.execute(
            "INSERT INTO sources(path, state, reason, updated_ns) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET state = excluded.state, reason = excluded.reason, "
            "updated_ns = excluded.updated_ns",
            (os.fspath(path), state.value, reason, now_ns),
        )

    def full_requested(self, path: Path, now_ns: int) -> None:
        """Record when a full sync of the source was last requested."""
        self.db.execute(
            "UPDATE sources SET last_full_request_ns = ? WHERE path = ?", (now_ns, os.fspath(path))
        )

    def all(self) -> list[SourceRow]:
        """Every persisted source, by path."""
        rows = self.db.execute(
            "SELECT path, state, reason, updated_ns, last_full_request_ns FROM sources ORDER BY path"
        ).fetchall()
        return [SourceRow(r[0], SourceState(r[1]), r[2], r[3], r[4]) for r in rows]


RUNNING_MARKER = "pusher.running"


def mark_running(state_dir: Path) -> bool:
    """Leave the running marker (our pid) in ``state_dir``; True if one was already there.

    A clean stop removes it (:func:`clear_running`); one found at start means
    the previous run was killed or crashed.
    """
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    marker = Path(state_dir) / RUNNING_MARKER
    found = marker.exists()
    tmp = marker.with_name(f".{RUNNING_MARKER}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, marker)
    return found


def clear_running(state_dir: Path) -> None:
    """Remove the running marker: this run stopped cleanly."""
    (Path(state_dir) / RUNNING_MARKER).unlink(missing_ok=True)
