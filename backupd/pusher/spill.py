"""Changes that could not be journaled (PostgreSQL down): kept on local disk until they are.

With HA every node appends its coalesced changes to the shared journal. When
that fails (the database is down, or does not answer in time) the changes go
to ``<state_dir>/journal-spill.sqlite`` at once, so memory holds no more than
one flush window of events and a kill -9 while the database is down loses
nothing. Each flush first journals what was spilled (oldest first, at most
``SPILL_BATCH`` rows per flush), then the new changes: the journal sees the
changes of a path in the order they happened.

Table::

    spill(source TEXT, path BLOB, kind, is_dir, force, seq, PRIMARY KEY (source, path))

A path spilled twice keeps one row, the two changes merged as
``coalesce.merge`` does; ``seq`` grows with every write, so a row written
again while its older value was being journaled is not removed with it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from backupd.pusher.coalesce import Change, Kind, merge

SPILL_FILE = "journal-spill.sqlite"
SPILL_BATCH = 10_000  # spilled rows journaled per flush
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spill (
    source TEXT NOT NULL, path BLOB NOT NULL, kind INTEGER NOT NULL, is_dir INTEGER NOT NULL,
    force INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (source, path));
CREATE INDEX IF NOT EXISTS spill_seq ON spill(source, seq);
"""


class SpillStore:
    """The spill table (one SQLite connection, WAL, synchronous = FULL)."""

    def __init__(self, state_dir: Path) -> None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(Path(state_dir) / SPILL_FILE, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self._seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM spill").fetchone()[0]

    def close(self) -> None:
        """Close the SQLite connection."""
        self.db.close()

    def add(self, source: str, changes: Mapping[bytes, Change]) -> None:
        """Keep ``changes`` of ``source`` (merged into what is already spilled), in one transaction."""
        if not changes:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for path, change in changes.items():
                row = self.db.execute(
                    "SELECT kind, is_dir, force FROM spill WHERE source = ? AND path = ?", (source, path)
                ).fetchone()
                old = None if row is None else Change(Kind(row[0]), bool(row[1]), bool(row[2]))
                new = merge(old, change)
                self._seq += 1
                self.db.execute(
                    "INSERT OR REPLACE INTO spill VALUES (?, ?, ?, ?, ?, ?)",
                    (source, path, int(new.kind), int(new.is_dir), int(new.force), self._seq),
                )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def oldest(self, source: str, limit: int = SPILL_BATCH) -> dict[bytes, tuple[Change, int]]:
        """Up to ``limit`` spilled changes of ``source``, oldest first: path -> (change, seq)."""
        rows = self.db.execute(
            "SELECT path, kind, is_dir, force, seq FROM spill WHERE source = ? ORDER BY seq LIMIT ?",
            (source, limit),
        ).fetchall()
        return {bytes(r[0]): (Change(Kind(r[1]), bool(r[2]), bool(r[3])), r[4]) for r in rows}

    def remove(self, source: str, taken: Mapping[bytes, tuple[Change, int]]) -> None:
        """Drop rows journaled since :meth:`oldest` (a row written again since then stays)."""
        with self.db:
            self.db.executemany(
                "DELETE FROM spill WHERE source = ? AND path = ? AND seq = ?",
                [(source, path, seq) for path, (_change, seq) in taken.items()],
            )

    def count(self, source: str) -> int:
        """Spilled changes of ``source``."""
        return self.db.execute("SELECT count(*) FROM spill WHERE source = ?", (source,)).fetchone()[0]


def spilled_count(state_dir: Path, source: str) -> int:
    """Spilled changes of ``source``, read-only (``backupd status``); 0 if nothing was ever spilled."""
    path = Path(state_dir) / SPILL_FILE
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT count(*) FROM spill WHERE source = ?", (source,)).fetchone()[0]
    except sqlite3.OperationalError:  # created but not yet set up
        return 0
    finally:
        db.close()


async def journal_with_spill(
    spill: SpillStore,
    source: str,
    changes: dict[bytes, Change],
    append: Callable[[str, Mapping[bytes, Change]], Awaitable[None]],
) -> None:
    """Journal what ``source`` spilled earlier, then ``changes``; on failure spill ``changes``.

    ``append(source, changes)`` is the journal insert (``Lease.append``).
    Whatever fails, or is cancelled by a timeout, is on local disk when this
    returns or raises, so the caller keeps nothing in memory.

    Raises:
        whatever ``append`` raises (psycopg.Error, TimeoutError, CancelledError).
    """
    try:
        earlier = spill.oldest(source)
        if earlier:
            await append(source, {path: change for path, (change, _seq) in earlier.items()})
            spill.remove(source, earlier)
        if changes:
            await append(source, changes)
    except BaseException:
        spill.add(source, changes)
        raise
