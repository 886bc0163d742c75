"""HA through PostgreSQL: a leader lease with an epoch (the fencing token) and a shared journal.

Several pushers watching one shared volume each see only their own host's
writes (inotify is local), so every node appends its changed paths to the
journal; only the leader drains it into its target queues and pushes.

Tables (created if missing)::

    backupd_lease(grp TEXT PRIMARY KEY, holder TEXT, epoch BIGINT, expires_at TIMESTAMPTZ)
    backupd_journal(id BIGSERIAL PRIMARY KEY, grp TEXT, source TEXT, path BYTEA,
                    kind SMALLINT, is_dir BOOL, force BOOL, node TEXT, at TIMESTAMPTZ)

- Acquire: take the row when it expired (or is ours from an earlier run),
  ``epoch + 1``. Renew: only while holder *and* epoch are still ours and the
  lease has not expired. Times are the database's ``now()``: node clocks do
  not matter.
- Fencing: deleting drained journal rows is one statement that also checks
  the lease (holder, epoch, not expired); a deposed leader cannot drop
  changes the new one has not seen. The daemon stops pushing when it cannot
  renew before its local deadline (lease time minus a margin), and kills a
  running rsync.
- Journal kind 0 is a rescan request: a node lost events (overflow) and the
  leader owes a full sync of that source.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backupd.config.pusher_model import HaConfig
from backupd.pusher.coalesce import Change

if TYPE_CHECKING:  # psycopg is imported only when HA is configured (Lease.connect)
    import psycopg

RESCAN_KIND = 0
_SETUP = (
    "CREATE TABLE IF NOT EXISTS backupd_lease (grp TEXT PRIMARY KEY, holder TEXT NOT NULL,"
    " epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE IF NOT EXISTS backupd_journal (id BIGSERIAL PRIMARY KEY, grp TEXT NOT NULL,"
    " source TEXT NOT NULL, path BYTEA NOT NULL, kind SMALLINT NOT NULL, is_dir BOOLEAN NOT NULL,"
    " force BOOLEAN NOT NULL, node TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS backupd_journal_grp ON backupd_journal(grp, id)",
)
_ACQUIRE = """
INSERT INTO backupd_lease AS l (grp, holder, epoch, expires_at)
VALUES (%(grp)s, %(node)s, 1, now() + make_interval(secs => %(lease)s))
ON CONFLICT (grp) DO UPDATE
   SET holder = EXCLUDED.holder, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at
 WHERE l.expires_at < now() OR l.holder = EXCLUDED.holder
RETURNING epoch
"""
_RENEW = """
UPDATE backupd_lease SET expires_at = now() + make_interval(secs => %(lease)s)
 WHERE grp = %(grp)s AND holder = %(node)s AND epoch = %(epoch)s AND expires_at >= now()
RETURNING epoch
"""
_FENCE = (
    "EXISTS (SELECT 1 FROM backupd_lease WHERE grp = %(grp)s AND holder = %(node)s"
    " AND epoch = %(epoch)s AND expires_at >= now())"
)


@dataclass(frozen=True)
class JournalRow:
    """One journal entry: a changed path of a source (or a rescan request, kind 0)."""

    id: int
    source: str
    path: bytes
    kind: int
    is_dir: bool
    force: bool
    node: str


CANCEL_RETRY_S = 0.5  # a timed-out call is cancelled again this often, at most CANCEL_TRIES times
CANCEL_TRIES = 4


async def bounded(call: Awaitable, budget_s: float, background: set[asyncio.Task]):
    """``await call`` for at most ``budget_s`` seconds of our own clock; its result.

    Unlike ``asyncio.wait_for`` this does not wait for the cancelled call to
    finish: psycopg answers a cancellation during a query by asking the
    server to cancel it and waiting up to 5 s (twice), which behind a
    stalled network would hold a leader past its step-down time. The call is
    cancelled and left in ``background`` (cancelled again every
    CANCEL_RETRY_S, which makes psycopg close the connection).

    Raises:
        TimeoutError: the budget ran out.
        whatever the call raises within the budget.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, budget_s))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    reaper = asyncio.ensure_future(_cancel_until_done(task))
    background.add(reaper)
    reaper.add_done_callback(background.discard)
    raise TimeoutError


async def _cancel_until_done(task: asyncio.Task) -> None:
    for _ in range(CANCEL_TRIES):
        done, _ = await asyncio.wait({task}, timeout=CANCEL_RETRY_S)
        if done:
            break
        task.cancel()
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a late database error is expected here


def database_errors() -> tuple[type[BaseException], ...]:
    """The exception types a lease call raises when the database fails (psycopg.Error).

    Imports psycopg, so call it only when HA is configured.
    """
    import psycopg

    return (psycopg.Error,)


class Lease:
    """One node's view of the lease and the journal (one async connection)."""

    def __init__(self, ha: HaConfig) -> None:
        self.ha = ha
        self.conn: psycopg.AsyncConnection | None = None
        self._params = {"grp": ha.group, "node": ha.node_id, "lease": ha.lease_s}

    async def connect(self) -> None:
        """(Re)connect, autocommit, and create the tables if missing.

        Raises:
            psycopg.Error: the database cannot be reached.
        """
        await self.close()
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(self.ha.dsn, autocommit=True, connect_timeout=5)
        for statement in _SETUP:
            try:
                await self.conn.execute(statement)
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                pass  # another node created it at the same moment

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    def abandon(self, background: set[asyncio.Task]) -> None:
        """Forget the connection now (its state is unknown) and close it in ``background``, at most 1 s."""
        conn, self.conn = self.conn, None
        if conn is None:
            return

        async def close() -> None:
            try:
                await asyncio.wait_for(conn.close(), 1.0)
            except Exception:  # noqa: BLE001 - a connection given up on: nothing to report
                pass

        task = asyncio.ensure_future(close())
        background.add(task)
        task.add_done_callback(background.discard)

    async def _one(self, query: str, **params) -> tuple | None:
        if self.conn is None or self.conn.closed:
            await self.connect()
        cur = await self.conn.execute(query, {**self._params, **params})
        return await cur.fetchone()

    async def try_acquire(self) -> int | None:
        """Become leader if the lease is free; the new epoch, or None."""
        row = await self._one(_ACQUIRE)
        return None if row is None else int(row[0])

    async def renew(self, epoch: int) -> bool:
        """Extend our lease; False if it is no longer ours (expired or taken)."""
        return await self._one(_RENEW, epoch=epoch) is not None

    async def release(self, epoch: int) -> None:
        """Give the lease up now (clean shutdown), so another node takes over at once."""
        await self._one(
            "UPDATE backupd_lease SET expires_at = now() - interval '1 second'"
            " WHERE grp = %(grp)s AND holder = %(node)s AND epoch = %(epoch)s RETURNING epoch",
            epoch=epoch,
        )

    async def holder(self) -> tuple[str, int, float] | None:
        """``(holder, epoch, seconds left)`` of the lease row, None if there is none."""
        row = await self._one(
            "SELECT holder, epoch, extract(epoch FROM expires_at - now()) FROM backupd_lease WHERE grp = %(grp)s"
        )
        return None if row is None else (row[0], int(row[1]), float(row[2]))

    async def backlog(self) -> int:
        """Rows in our group's journal (changes appended, not yet drained by a leader)."""
        row = await self._one("SELECT count(*) FROM backupd_journal WHERE grp = %(grp)s")
        return int(row[0]) if row else 0

    async def append(self, source: str, changes: Mapping[bytes, Change]) -> None:
        """Append a source's coalesced changes to the journal (one round trip per 1000)."""
        rows = [
            (self.ha.group, source, path, int(c.kind), c.is_dir, c.force, self.ha.node_id)
            for path, c in changes.items()
        ]
        await self._insert(rows)

    async def append_rescan(self, source: str) -> None:
        """Ask the leader for a full sync of ``source`` (this node lost events)."""
        await self._insert([(self.ha.group, source, b"", RESCAN_KIND, False, False, self.ha.node_id)])

    async def _insert(self, rows: list[tuple]) -> None:
        if self.conn is None or self.conn.closed:
            await self.connect()
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO backupd_journal (grp, source, path, kind, is_dir, force, node)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )

    async def drain(self, limit: int = 50_000) -> list[JournalRow]:
        """The oldest journal rows of our group (not removed: see :meth:`delete_through`)."""
        if self.conn is None or self.conn.closed:
            await self.connect()
        cur = await self.conn.execute(
            "SELECT id, source, path, kind, is_dir, force, node FROM backupd_journal"
            " WHERE grp = %(grp)s ORDER BY id LIMIT %(limit)s",
            {**self._params, "limit": limit},
        )
        return [JournalRow(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6]) for r in await cur.fetchall()]

    async def delete_through(self, epoch: int, last_id: int) -> bool:
        """Remove drained rows up to ``last_id``, fenced by our epoch; False if deposed."""
        row = await self._one(
            f"WITH gone AS (DELETE FROM backupd_journal WHERE grp = %(grp)s AND id <= %(last)s AND {_FENCE}"
            " RETURNING 1) SELECT count(*), " + _FENCE + " FROM gone",
            epoch=epoch, last=last_id,
        )
        return bool(row and row[1])
