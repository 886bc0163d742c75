"""``backupd status``: per source its state, per target its queue depth, lag and last success.

Read from the state files the daemon writes (read-only SQLite connections,
the heartbeat file), so it works while ``backupd watch`` runs, and after it
stopped. Every row also carries the daemon's own state: whether it is alive
(heartbeat time and pid), its HA role (``leader``/``standby``/``none``) and
lease epoch, the journal backlog, and the source's un-journaled changes
(spilled to local disk plus, while the daemon is alive, held in memory).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from backupd.config.pusher_model import PusherConfig
from backupd.pusher.heartbeat import Heartbeat, is_alive, read_heartbeat
from backupd.pusher.queue import failing_rows
from backupd.pusher.spill import spilled_count
from backupd.pusher.state_store import queue_path


@dataclass(frozen=True)
class TargetStatus:
    """One line of ``backupd status``."""

    source: str
    target: str
    state: str
    depth: int
    lag_s: float
    last_success: str | None
    full_sync_owed: bool
    failures: int
    last_error: str | None
    failing: int = 0  # paths in the fail queue
    failing_paths: tuple[tuple[str, int, str], ...] = ()  # (path, failures, last error line), the first ones
    daemon_alive: bool = False  # a fresh heartbeat whose pid runs
    daemon_pid: int | None = None
    heartbeat: str | None = None  # the last heartbeat's local time, ISO
    role: str = "none"  # leader / standby / none (no HA); of the last heartbeat
    epoch: int | None = None  # the lease epoch while leader
    journal_backlog: int | None = None  # rows in the HA group's journal at the daemon's last count
    unjournaled: int = 0  # changes of this source not in the journal yet: spilled + events in memory
    spilled: int = 0  # of those, kept on local disk (journal-spill.sqlite): they survive a kill -9


def _ro(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _when(ns: int | None) -> str | None:
    return datetime.fromtimestamp(ns / 1e9).isoformat(timespec="seconds") if ns else None


def collect_status(config: PusherConfig, now_ns: int | None = None) -> list[TargetStatus]:
    """Status of every (source, target) pair; unknown state is shown as ``-``."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    states: dict[str, str] = {}
    db = _ro(config.state_dir / "sources.sqlite")
    if db is not None:
        with db:
            states = dict(db.execute("SELECT path, state FROM sources").fetchall())
        db.close()
    beat = read_heartbeat(config.state_dir)
    alive = is_alive(beat, now_ns)
    out = []
    for source in config.sources:
        label = os.fspath(source.path)
        daemon = _daemon_fields(config, beat, alive, label)
        for target in source.targets:
            row = _target_status(config, source, target, states.get(label, "-"), now_ns)
            out.append(replace(row, **daemon))
    return out


def _daemon_fields(config: PusherConfig, beat: Heartbeat | None, alive: bool, label: str) -> dict:
    """The daemon's part of a row; ``unjournaled`` counts memory only while the daemon lives."""
    spilled = unjournaled = spilled_count(config.state_dir, label) if config.ha is not None else 0
    if beat is None:
        return {"unjournaled": unjournaled, "spilled": spilled, "role": "none" if config.ha is None else "-"}
    if alive:
        unjournaled += beat.unjournaled.get(label, 0)
    return {
        "daemon_alive": alive,
        "daemon_pid": beat.pid,
        "heartbeat": _when(beat.at_ns),
        "role": beat.role if alive else ("none" if config.ha is None else "-"),
        "epoch": beat.epoch if alive else None,
        "journal_backlog": beat.journal_backlog,
        "unjournaled": unjournaled,
        "spilled": spilled,
    }


def _target_status(config, source, target, state: str, now_ns: int) -> TargetStatus:
    db = _ro(queue_path(config.state_dir, source, target))
    meta: dict = {}
    depth, oldest, failing, shown = 0, None, 0, ()
    if db is not None:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        depth, oldest = db.execute("SELECT count(*), min(first_ns) FROM pending").fetchone()
        shown = failing_rows(db)
        if shown:
            failing = db.execute("SELECT count(*) FROM failing").fetchone()[0]
        db.close()
    return TargetStatus(
        source=os.fspath(source.path),
        target=target.url,
        state=state,
        depth=depth,
        lag_s=round((now_ns - oldest) / 1e9, 3) if oldest else 0.0,
        last_success=_when(meta.get("last_success_ns")),
        full_sync_owed=int(meta.get("full_requested", 0)) > int(meta.get("full_done", 0)),
        failures=int(meta.get("failures", 0)),
        last_error=meta.get("last_error"),
        failing=failing,
        failing_paths=shown,
    )


def daemon_line(row: TargetStatus) -> str:
    """``daemon: alive, pid P, heartbeat T; role R, epoch E, journal backlog B`` (the table's first line)."""
    if row.daemon_pid is None:
        alive = "never ran (no heartbeat)"
    else:
        alive = f"{'alive' if row.daemon_alive else 'NOT RUNNING'}, pid {row.daemon_pid}, heartbeat {row.heartbeat}"
    ha = f"role {row.role}"
    if row.role == "leader":
        ha += f", epoch {row.epoch}"
    if row.journal_backlog is not None:
        ha += f", journal backlog {row.journal_backlog}"
    return f"daemon: {alive}; {ha}"


def format_status(rows: list[TargetStatus]) -> str:
    """A plain table, one target per line, under the daemon's line; last errors and failing paths under it."""
    head = ("SOURCE", "STATE", "TARGET", "PENDING", "LAG_S", "LAST_SUCCESS", "FULL_OWED", "FAILURES", "FAILING",
            "UNJOURNALED")
    lines = [head]
    for r in rows:
        lines.append((r.source, r.state, r.target, str(r.depth), f"{r.lag_s:.1f}", r.last_success or "never",
                      "yes" if r.full_sync_owed else "no", str(r.failures), str(r.failing), str(r.unjournaled)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [daemon_line(rows[0])] if rows else []
    text += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    for r in rows:
        if r.last_error:
            text.append(f"  {r.target}: last error: {r.last_error}")
        for path, failures, line in r.failing_paths:
            text.append(f"  {r.target}: failing path {path} ({failures} failures): {line}")
        if r.failing > len(r.failing_paths):
            text.append(f"  {r.target}: ... and {r.failing - len(r.failing_paths)} more failing paths")
    return "\n".join(text)


def as_dicts(rows: list[TargetStatus]) -> list[dict]:
    """The rows as plain dicts (``--json``)."""
    return [asdict(r) for r in rows]
