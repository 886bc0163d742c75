"""The durable queue of one target: its pending changes and status, in one SQLite file.

Each (source, target) pair has ``<state_dir>/queue-<key>.sqlite``, so a target
that is down keeps its own backlog and catches up when it returns, and a
restarted pusher loses nothing that reached the queue (WAL, ``synchronous =
FULL``: a commit survives a SIGKILL and a power cut).

Tables::

    pending(path BLOB PRIMARY KEY, kind, is_dir, force, seq, first_ns)
    meta(key TEXT PRIMARY KEY, value)
    failing(path BLOB PRIMARY KEY, kind, is_dir, force, failures, retry_ns, first_ns, last_error)

``seq`` grows with every write to a row: a batch settles a row only if it was
not written again after the batch was planned (``ack``); a full sync settles
every row written before it started (``ack_through``). ``first_ns`` is when
the oldest unpushed change of that path was queued (lag). Full syncs are
owed while ``full_requested > full_done`` (counters, so a request made during
a full sync is not lost).

``failing`` is the fail queue (sersync's per-file retry list): paths a run
named in its error lines leave ``pending`` (the rest of the batch is
settled) and are retried on their own, ``retry_ns`` on, with a backoff that
doubles per failure; a later successful run of the path removes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from backupd.pusher.coalesce import Change, Kind, merge

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    path BLOB PRIMARY KEY, kind INTEGER NOT NULL, is_dir INTEGER NOT NULL,
    force INTEGER NOT NULL, seq INTEGER NOT NULL, first_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS pending_seq ON pending(seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS failing (
    path BLOB PRIMARY KEY, kind INTEGER NOT NULL, is_dir INTEGER NOT NULL, force INTEGER NOT NULL,
    failures INTEGER NOT NULL, retry_ns INTEGER NOT NULL, first_ns INTEGER NOT NULL, last_error TEXT);
"""
SHOWN_FAILING = 20  # failing paths listed in status (all are counted)
_CHUNK = 500  # parameters per IN (...) query


@dataclass(frozen=True)
class QueueStatus:
    """What ``backupd status`` and the metrics show of one target queue."""

    depth: int
    oldest_ns: int | None
    last_success_ns: int | None
    last_attempt_ns: int | None
    last_error: str | None
    failures: int
    full_owed: bool
    last_full_ns: int | None
    failing: int = 0
    failing_paths: tuple[tuple[str, int, str], ...] = ()  # (path, failures, last error line), first ones


class TargetQueue:
    """One target's pending set and status (a SQLite connection; one thread at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the SQLite connection."""
        self.db.close()

    # ------------------------------------------------------------ meta

    def get(self, key: str, default=None):
        """One meta value, ``default`` if unset."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set(self, **values) -> None:
        """Set meta values in one transaction (None stores NULL)."""
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values.items())

    def _tx(self):
        return _Transaction(self.db)

    # ------------------------------------------------------------ pending

    def add(self, changes: Mapping[bytes, Change], now_ns: int) -> None:
        """Merge ``changes`` into the pending set (one transaction)."""
        if not changes:
            return
        with self._tx():
            seq = int(self.get("next_seq", 1))
            old = self._rows(changes.keys())
            rows = []
            for path, change in changes.items():
                prev = old.get(path)
                merged = merge(prev[0] if prev else None, change)
                first = prev[1] if prev else now_ns
                rows.append((path, int(merged.kind), merged.is_dir, merged.force, seq, first))
                seq += 1
            self.db.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_seq', ?)", (seq,))

    def _rows(self, paths: Iterable[bytes]) -> dict[bytes, tuple[Change, int]]:
        out: dict[bytes, tuple[Change, int]] = {}
        paths = list(paths)
        for i in range(0, len(paths), _CHUNK):
            part = paths[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            query = f"SELECT path, kind, is_dir, force, first_ns FROM pending WHERE path IN ({marks})"
            for path, kind, is_dir, force, first in self.db.execute(query, part):
                out[bytes(path)] = (Change(Kind(kind), bool(is_dir), bool(force)), first)
        return out

    def snapshot(self) -> tuple[dict[bytes, Change], dict[bytes, int]]:
        """Every pending change and its seq, as of now."""
        changes: dict[bytes, Change] = {}
        seqs: dict[bytes, int] = {}
        for path, kind, is_dir, force, seq in self.db.execute(
            "SELECT path, kind, is_dir, force, seq FROM pending"
        ):
            changes[bytes(path)] = Change(Kind(kind), bool(is_dir), bool(force))
            seqs[bytes(path)] = seq
        return changes, seqs

    def ack(self, covered: Iterable[bytes], seqs: Mapping[bytes, int]) -> None:
        """Drop the rows a successful batch settled, unless written again since."""
        with self._tx():
            self.db.executemany("DELETE FROM pending WHERE path = ? AND seq = ?", ((p, seqs[p]) for p in covered))

    def last_seq(self) -> int:
        """The seq of the newest write so far (0: none yet)."""
        return int(self.get("next_seq", 1)) - 1

    def ack_through(self, seq: int) -> None:
        """Drop every row last written at or before ``seq`` (a full sync covered it)."""
        with self._tx():
            self.db.execute("DELETE FROM pending WHERE seq <= ?", (seq,))

    def depth(self) -> int:
        """Number of pending paths."""
        return self.db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def oldest_ns(self) -> int | None:
        """When the oldest pending change was queued (ns since the epoch), None if none."""
        return self.db.execute("SELECT min(first_ns) FROM pending").fetchone()[0]

    # ------------------------------------------------------------ full syncs and status

    def request_full(self) -> int:
        """Owe one more full sync; returns the request number."""
        with self._tx():
            n = int(self.get("full_requested", 0)) + 1
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('full_requested', ?)", (n,))
        return n

    def full_owed(self) -> int:
        """The request number a full sync starting now settles, 0 if none is owed."""
        requested = int(self.get("full_requested", 0))
        return requested if requested > int(self.get("full_done", 0)) else 0

    def status(self) -> QueueStatus:
        """Depth, lag source, last success and errors, for status and metrics."""
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        return QueueStatus(
            depth=self.depth(),
            oldest_ns=self.oldest_ns(),
            last_success_ns=meta.get("last_success_ns"),
            last_attempt_ns=meta.get("last_attempt_ns"),
            last_error=meta.get("last_error"),
            failures=int(meta.get("failures", 0)),
            full_owed=int(meta.get("full_requested", 0)) > int(meta.get("full_done", 0)),
            last_full_ns=meta.get("last_full_ns"),
            failing=self.db.execute("SELECT count(*) FROM failing").fetchone()[0],
            failing_paths=failing_rows(self.db),
        )

    # ------------------------------------------------------------ the fail queue

    def fail(self, failed: Mapping[bytes, tuple[Change, str]], seqs: Mapping[bytes, int], now_ns: int,
             backoff: Callable[[int], float]) -> None:
        """Move paths a run failed on into the fail queue (one transaction).

        Args:
            failed: ``{path: (its change, the error line naming it)}``.
            seqs: the pending seqs the run was planned with (a row written
                again since stays pending too).
            now_ns: now, ns since the epoch (the retry time counts from it).
            backoff: seconds before the next retry after ``n`` failures.
        """
        with self._tx():
            for path, (change, line) in failed.items():
                row = self.db.execute("SELECT failures, first_ns, retry_ns FROM failing WHERE path = ?",
                                      (path,)).fetchone()
                failures, first, retry = (row[0] + 1, row[1], row[2]) if row else (1, now_ns, 0)
                retry = max(retry, now_ns + int(backoff(failures) * 1e9))
                self.db.execute("INSERT OR REPLACE INTO failing VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (path, int(change.kind), change.is_dir, change.force, failures, retry, first,
                                 line[:1000]))
                if path in seqs:
                    self.db.execute("DELETE FROM pending WHERE path = ? AND seq = ?", (path, seqs[path]))

    def failing_due(self, now_ns: int) -> dict[bytes, Change]:
        """The failing paths whose retry time has come, with their changes."""
        rows = self.db.execute("SELECT path, kind, is_dir, force FROM failing WHERE retry_ns <= ?", (now_ns,))
        return {bytes(p): Change(Kind(k), bool(d), bool(f)) for p, k, d, f in rows}

    def next_failing_retry_ns(self) -> int | None:
        """When the next failing path is due (ns since the epoch), None if none fails."""
        return self.db.execute("SELECT min(retry_ns) FROM failing").fetchone()[0]

    def clear_failing(self, paths: Iterable[bytes] | None = None, keep: Iterable[bytes] = ()) -> None:
        """Forget failing paths a run settled (with None: all but ``keep``, a full sync did)."""
        with self._tx():
            if paths is None:
                kept = set(keep)
                every = [bytes(r[0]) for r in self.db.execute("SELECT path FROM failing").fetchall()]
                self.db.executemany("DELETE FROM failing WHERE path = ?", ((p,) for p in every if p not in kept))
            else:
                self.db.executemany("DELETE FROM failing WHERE path = ?", ((p,) for p in paths))

    def failing_count(self) -> int:
        """Number of paths in the fail queue."""
        return self.db.execute("SELECT count(*) FROM failing").fetchone()[0]


def failing_rows(db: sqlite3.Connection) -> tuple[tuple[str, int, str], ...]:
    """The first SHOWN_FAILING failing paths of a queue database: ``(path, failures, last error)``.

    A queue file made before the fail queue existed has no such table: ``()``.
    """
    try:
        rows = db.execute("SELECT path, failures, last_error FROM failing ORDER BY path LIMIT ?",
                          (SHOWN_FAILING,)).fetchall()
    except sqlite3.OperationalError:
        return ()
    return tuple((bytes(p).decode(errors="replace"), n, e or "") for p, n, e in rows)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error); nests as a no-op."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.outer:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
