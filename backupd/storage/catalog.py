"""The version catalog of a module: every version's live interval, metadata and checksums.

One SQLite database per module, in WAL mode, outside the module tree (so no
pull can list it and no push can reach it): ``<catalog dir>/<module>/catalog.sqlite``
(the module setting ``catalog dir``), else
``<state dir>/catalog-<module>-<hash of the module path>/catalog.sqlite`` with the
state dir ``$BACKUPD_STATE_DIR``, ``/var/lib/backupd`` as root, or
``$XDG_STATE_HOME/backupd`` (``~/.local/state/backupd``).

A row per version (table ``versions``): ``path`` (module path, bytes),
``type`` (file, dir, symlink, other), ``live_from`` / ``live_to`` (ns since
the epoch; ``live_to`` NULL while live), ``size``, ``mode``, ``mtime_ns``,
``ino`` (the stored entry's inode: a push always makes a new one, and history
links or renames it, so it identifies the version on disk), ``xxh128`` (hex
of the stored bytes: a file's content, a symlink's target), ``xfer_sum``
(the whole-file checksum the transfer verified, hex, with ``xfer_sum_kind``),
``history`` (where the version went: ``history-backup/DAY/path[.~HHMMSS~]``),
``approx`` (1: interval from the layout's evidence, reindex/reconcile) and
``missing`` (1: the stored entry is gone).

Point-in-time rule: ``T`` names a second; the state "at T" is the one at the
end of that second, so a version made live during second S is live at S.
:func:`at_bound` turns T into the exclusive bound ``B`` (ns) and a version is
live at T when ``live_from < B and (live_to is NULL or live_to >= B)``.

Writes come from the commit path (``ModuleTree.install``/``delete``/``mkdir``)
through a :class:`CatalogWriter`: ops are recorded in memory once the
rename that makes a version live or retires one is done, and applied in
batched transactions (every ``BATCH_OPS`` ops and when the session ends;
runs of plain inserts as one ``executemany``), so a small-file push pays
one SQLite commit per batch (WAL, ``synchronous=NORMAL``: no fsync per
commit; SQLite's automatic checkpoints, one per ~1000 pages of WAL, about
one per 20,000 new files, and one as the last connection closes). Ops are keyed by (path, ino) and applied
idempotently, so two sessions flushing in either order agree; what a crash
loses (the unflushed batch) is repaired on start by ``reconcile.py``, which
the session's writer mark (``catalog_state.py``) makes walk the module.

Source: design.md §1 "Storage and history" (catalog); issue 12.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import xxhash

from backupd.storage.catalog_state import close_mark, open_mark

SCHEMA_VERSION = 2       # PRAGMA user_version once SCHEMA is applied (2: the partial history index)
BATCH_OPS = 512          # ops per transaction while a session runs
BUSY_TIMEOUT_MS = 30_000  # another session's batch: wait this long for the write lock
SCHEMA = """
CREATE TABLE IF NOT EXISTS versions(
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL,
    type TEXT NOT NULL,
    live_from INTEGER,
    live_to INTEGER,
    size INTEGER NOT NULL DEFAULT 0,
    mode INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    ino INTEGER,
    xxh128 TEXT,
    xfer_sum TEXT,
    xfer_sum_kind TEXT,
    history BLOB,
    approx INTEGER NOT NULL DEFAULT 0,
    missing INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS versions_path ON versions(path, live_from);
DROP INDEX IF EXISTS versions_history;
CREATE INDEX IF NOT EXISTS versions_kept ON versions(history) WHERE history IS NOT NULL;
CREATE INDEX IF NOT EXISTS versions_placeholder ON versions(path) WHERE live_from IS NULL;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
"""
COLUMNS = ("id", "path", "type", "live_from", "live_to", "size", "mode", "mtime_ns", "ino",
           "xxh128", "xfer_sum", "xfer_sum_kind", "history", "approx", "missing")
KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}   # S_IFMT -> type
NS = 1_000_000_000


def kind_of(mode: int) -> str:
    """``file``, ``dir``, ``symlink`` or ``other`` for an ``st_mode``."""
    return KINDS.get(stat.S_IFMT(mode), "other")


def time_ns(when: datetime) -> int:
    """A datetime (naive = local) as ns since the epoch, microsecond resolution."""
    return int(round(when.timestamp() * 1_000_000)) * 1000


def at_bound(when: datetime) -> int:
    """Exclusive bound (ns) of "at ``when``": the end of the second it names."""
    return (int(when.timestamp()) + 1) * NS


def parse_instant(text: str, now: datetime | None = None) -> datetime | None:
    """T as a local naive datetime, or None when it is not a time.

    An ISO date means the end of that day (23:59:59), an ISO date-time
    itself; anything else goes to ``dateparser`` ("2 hours ago",
    "yesterday 18:00"), relative to ``now`` when given.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.max.time()).replace(microsecond=0)
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
        return parsed.astimezone().replace(tzinfo=None) if parsed.tzinfo else parsed
    except ValueError:
        pass
    import dateparser  # only here: its import costs ~0.3 s

    settings = {"PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": False}
    if now is not None:
        settings["RELATIVE_BASE"] = now
    return dateparser.parse(text, settings=settings)


def default_state_dir() -> Path:
    """Where catalogs go without a ``catalog dir`` setting (see the module docstring)."""
    env = os.environ.get("BACKUPD_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/backupd")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "backupd"


def catalog_file(name: str, path: Path | str, catalog_dir: Path | None = None) -> Path:
    """The catalog database of module ``name`` served from ``path``.

    ``<catalog dir>/<name>/catalog.sqlite``, else
    ``<state dir>/catalog-<name>-<hash of the real module path>/catalog.sqlite``:
    a directory per module, so a module with its own ``uid`` can own it
    (SQLite makes its ``-wal`` and ``-shm`` files beside the database).
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
    if catalog_dir is not None:
        return Path(catalog_dir) / safe / "catalog.sqlite"
    real = os.path.realpath(os.fspath(path)).encode("utf-8", "surrogateescape")
    tag = hashlib.sha256(real).hexdigest()[:12]
    return default_state_dir() / f"catalog-{safe}-{tag}" / "catalog.sqlite"


def module_catalog_file(module) -> Path:
    """:func:`catalog_file` for a ``ModuleConfig``."""
    return catalog_file(module.name, module.path, getattr(module, "catalog_dir", None))


@dataclass(frozen=True)
class Row:
    """One catalog row (see the module docstring for the columns)."""

    id: int
    path: bytes
    type: str
    live_from: int | None
    live_to: int | None
    size: int
    mode: int
    mtime_ns: int
    ino: int | None
    xxh128: str | None
    xfer_sum: str | None
    xfer_sum_kind: str | None
    history: bytes | None
    approx: int
    missing: int

    @property
    def stored(self) -> bytes:
        """Where the version is now: its history path once retired, else the live path."""
        return self.history if self.live_to is not None and self.history else self.path

    def live_at(self, bound: int) -> bool:
        """True when this version was live at the second whose exclusive bound is ``bound``."""
        start = self.live_from if self.live_from is not None else -1
        return start < bound and (self.live_to is None or self.live_to >= bound)


def _row(values: Iterable) -> Row:
    v = list(values)
    v[1] = bytes(v[1])
    v[12] = bytes(v[12]) if v[12] is not None else None
    return Row(*v)


class Catalog:
    """One module's catalog database (opened, schema ensured).

    Args:
        db_path: the SQLite file; its directory is created (mode 0700).
        readonly: open an existing file read-only (``FileNotFoundError`` if none).

    Raises:
        sqlite3.Error, OSError: the database cannot be opened or created.
    """

    def __init__(self, db_path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(db_path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no catalog at {self.path}")
            uri = f"file:{self.path}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        else:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                      check_same_thread=False)  # a writer's lock serializes its threads
            self.db.execute("PRAGMA synchronous=NORMAL")
            if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:   # once per database
                self.db.execute("PRAGMA journal_mode=WAL")   # persistent: later opens find it set
                self.db.executescript(SCHEMA)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection; idempotent."""
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rows(self, where: str = "1", params: tuple = ()) -> list[Row]:
        """Rows matching an SQL condition, ordered by path then live_from."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM versions WHERE {where} ORDER BY path, live_from, id"
        return [_row(r) for r in self.db.execute(sql, params)]

    def under(self, path: bytes, where: str = "1", params: tuple = ()) -> list[Row]:
        """Rows of ``path`` and everything below it (``b"."``/``b""``: the whole module)."""
        if path in (b"", b"."):
            return self.rows(where, params)
        cond = f"(path = ? OR (path >= ? AND path < ?)) AND ({where})"
        return self.rows(cond, (path, path + b"/", path + b"0", *params))

    def live_at(self, path: bytes, bound: int) -> list[Row]:
        """The version of each path at or below ``path`` live at ``bound`` (see :func:`at_bound`).

        Returns one row per path (the one made live last when an empty-interval
        race left two), ordered by path.
        """
        cond = "COALESCE(live_from, -1) < ? AND (live_to IS NULL OR live_to >= ?)"
        best: dict[bytes, Row] = {}
        for row in self.under(path, cond, (bound, bound)):
            best[row.path] = row   # rows come ordered by live_from: the last one wins
        return list(best.values())

    def count(self) -> int:
        """Number of rows."""
        return self.db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]

    def set_meta(self, key: str, value: str) -> None:
        """Record one meta value (reindex time, last verify)."""
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        """A meta value, or None."""
        found = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def forget_history(self, prefix: bytes) -> int:
        """Delete the rows whose history copy lies under ``prefix/`` (prune); returns the count."""
        cur = self.db.execute("DELETE FROM versions WHERE history >= ? AND history < ?",
                              (prefix + b"/", prefix + b"0"))
        return cur.rowcount


# -------------------------------------------------------------- the session's writer


class CatalogWriter:
    """Records one session's commits in the catalog, in batched transactions.

    Called by ``ModuleTree`` inside the commit path. The ops of an install
    are recorded after its rename (:meth:`installed`, under the entry
    lock), so a committed batch never describes a rename that did not
    happen. Thread safe (the generator and the receiver
    of a push both write). Never raises into the commit path: a failing
    catalog is reported once through ``on_error`` and dropped (the tree
    stays the truth; the next start reconciles the two).

    Args:
        db_path: the module's catalog file.
        batch_ops: ops per transaction.
        on_error: called with the exception when the catalog fails.
    """

    def __init__(self, db_path: Path | str, *, batch_ops: int = BATCH_OPS, on_error=None) -> None:
        self.db_path = Path(db_path)
        self.batch_ops = batch_ops
        self.on_error = on_error
        self._ops: list[tuple] = []
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._mark: Path | None = None
        self.failed = False

    def begin(self) -> None:
        """Before the session's first change to the tree: leave a writer mark (``catalog_state.py``).

        Idempotent and cheap after the first call. The mark goes when
        :meth:`close` has committed the last batch; a killed session (or a
        failed catalog) leaves it, so the next start reconciles in full.
        """
        if self._mark is not None or self.failed:
            return
        with self._lock:
            if self._mark is not None or self.failed:
                return
            try:
                self._mark = open_mark(self.db_path)
            except OSError as exc:
                self.failed = True
                if self.on_error is not None:
                    self.on_error(exc)

    def made_live(self, path: bytes, st: os.stat_result, when_ns: int, *, xxh128: str | None = None,
                  xfer_sum: str | None = None, xfer_sum_kind: str | None = None) -> None:
        """A new version of ``path`` (lstat ``st``) became live at ``when_ns``."""
        self._add((_live_op(path, st, when_ns, xxh128, xfer_sum, xfer_sum_kind),))

    def retired(self, path: bytes, st: os.stat_result, when_ns: int, history: bytes | None, *,
                copy_ino: int | None = None) -> None:
        """The live version of ``path`` (lstat ``st``) went to ``history`` at ``when_ns``.

        A directory retires with everything below it (moved as a whole).
        ``copy_ino``: the version was copied, not linked (``--inplace``), so
        its stored inode is the copy's.
        """
        self._add((_retire_op(path, st, when_ns, history, copy_ino),))

    def installed(self, path: bytes, old: os.stat_result | None, kept: bytes | None, new: os.stat_result,
                  when_ns: int, *, xxh128: str | None = None, xfer_sum: str | None = None,
                  xfer_sum_kind: str | None = None, copy_ino: int | None = None) -> None:
        """One install, once its rename is done: ``old`` (None: there was none) retired to ``kept``, ``new`` live.

        Called after the rename, so a committed batch never describes a
        rename that did not happen; the two ops go in together. ``copy_ino``
        as for :meth:`retired` (history holds a copy of ``old``).
        """
        live = _live_op(path, new, when_ns, xxh128, xfer_sum, xfer_sum_kind)
        self._add((_retire_op(path, old, when_ns, kept, copy_ino), live) if old is not None else (live,))

    def attrs(self, path: bytes, mode: int | None, mtime_ns: int | None, when_ns: int) -> None:
        """The live version's mode or mtime changed in place at ``when_ns``.

        Recorded as a new row (same inode, same stored bytes) when they
        differ from the open row's, so "as of T" keeps the attributes of T.
        """
        self._add((("attrs", path, mode, mtime_ns, when_ns),))

    def _add(self, ops: tuple) -> None:
        if self.failed:
            return
        with self._lock:
            self._ops += ops
            full = len(self._ops) >= self.batch_ops
        if full:
            self.flush()

    def knows_live(self, path: bytes) -> bool:
        """Whether the catalog has ``path`` as a live version (True too when it cannot tell).

        Ops still queued in this writer count; once this writer has
        flushed, its own connection answers (it sees every committed batch,
        other sessions' too), else a read-only connection is opened for the
        question. A catalog that cannot be read answers True, so a caller
        that would drop an unknown file keeps it instead.
        """
        with self._lock:
            if any(len(op) > 1 and op[1] == path for op in self._ops):
                return True
            if self._catalog is not None and not self.failed:
                try:
                    return bool(self._catalog.live_at(path, now_ns()))
                except sqlite3.Error:
                    return True
        try:
            with Catalog(self.db_path, readonly=True) as cat:
                return bool(cat.live_at(path, now_ns()))
        except FileNotFoundError:
            return False
        except (sqlite3.Error, OSError):
            return True

    def flush(self) -> None:
        """Apply the ready ops in one transaction."""
        with self._lock:
            if not self._ops or self.failed:
                return
            ops, self._ops = self._ops, []
            try:
                if self._catalog is None:
                    self._catalog = Catalog(self.db_path)
                apply_ops(self._catalog.db, ops)
            except (sqlite3.Error, OSError) as exc:
                self.failed = True
                if self.on_error is not None:
                    self.on_error(exc)

    def close(self) -> None:
        """Flush and close; idempotent. The writer mark goes only when every batch was committed."""
        self.flush()
        with self._lock:
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None
            if self._mark is not None and not self.failed and not self._ops:
                close_mark(self._mark)
                self._mark = None


def _live_op(path: bytes, st: os.stat_result, when: int, xxh: str | None, xsum: str | None,
             xkind: str | None) -> tuple:
    return ("live", path, KINDS.get(stat.S_IFMT(st.st_mode), "other"), when, st.st_size, st.st_mode,
            st.st_mtime_ns, st.st_ino, xxh, xsum, xkind)


def _retire_op(path: bytes, st: os.stat_result, when: int, history: bytes | None, copy_ino: int | None) -> tuple:
    return ("retire", path, st.st_ino, when, history, kind_of(st.st_mode), st.st_size, st.st_mode,
            st.st_mtime_ns, copy_ino)


def apply_ops(db: sqlite3.Connection, ops: list[tuple]) -> None:
    """Apply writer ops in order, in one ``BEGIN IMMEDIATE`` transaction.

    ``live`` inserts a row, or completes the closed row a concurrent session's
    ``retire`` left for the same (path, ino); ``retire`` closes the open row
    of (path, ino), or leaves a closed row without ``live_from`` when that
    row is not written yet; ``attrs`` updates the open row of a path.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        # a closed row still waiting for its live_from (see _apply_retire) is rare: look for them once
        state = {"placeholders": db.execute("SELECT 1 FROM versions WHERE live_from IS NULL LIMIT 1").fetchone()
                 is not None}
        for kind, run in _runs(ops, state):
            if kind == "insert":   # a run of plain inserts: one statement for all of them
                db.executemany(_INSERT_LIVE, run)
                continue
            for op in run:
                _APPLY[op[0]](db, state, *op[1:])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


_INSERT_LIVE = ("INSERT INTO versions(path, type, live_from, size, mode, mtime_ns, ino, xxh128, xfer_sum, "
                "xfer_sum_kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _runs(ops: list[tuple], state: dict):
    """Split ``ops`` into ``("insert", [values...])`` runs of plain live inserts and ``("ops", [op...])``.

    A ``live`` op is a plain insert while no closed row awaits its start
    (``state["placeholders"]``); a ``retire`` may create one, so runs are cut
    at each non-live op and the state is re-read as the ops apply.
    """
    run: list[tuple] = []
    for op in ops:
        if op[0] == "live" and not state["placeholders"]:
            run.append(op[1:])
            continue
        if run:
            yield "insert", run
            run = []
        yield "ops", (op,)
    if run:
        yield "insert", run


def _apply_live(db, state, path, kind, when, size, mode, mtime_ns, ino, xxh, xsum, xkind) -> None:
    if not state["placeholders"]:
        db.execute(_INSERT_LIVE, (path, kind, when, size, mode, mtime_ns, ino, xxh, xsum, xkind))
        return
    done = db.execute(
        "UPDATE versions SET live_from = ?, approx = 0, type = ?, size = ?, mode = ?, mtime_ns = ?, xxh128 = ?, "
        "xfer_sum = ?, xfer_sum_kind = ? WHERE path = ? AND ino = ? AND live_from IS NULL AND live_to >= ?",
        (when, kind, size, mode, mtime_ns, xxh, xsum, xkind, path, ino, when))
    if done.rowcount:
        return
    db.execute(
        "INSERT INTO versions(path, type, live_from, size, mode, mtime_ns, ino, xxh128, xfer_sum, xfer_sum_kind) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (path, kind, when, size, mode, mtime_ns, ino, xxh, xsum, xkind))


def _apply_retire(db, state, path, ino, when, history, kind, size, mode, mtime_ns, copy_ino=None) -> None:
    is_dir = kind == "dir"
    stored = ino if copy_ino is None else copy_ino
    done = db.execute("UPDATE versions SET live_to = ?, history = ?, ino = ? WHERE path = ? AND ino = ? "
                      "AND live_to IS NULL", (when, history, stored, path, ino))
    if not done.rowcount:   # its row is not written yet (another session's batch), or it predates the catalog
        state["placeholders"] = True
        db.execute("INSERT INTO versions(path, type, live_to, size, mode, mtime_ns, ino, history, approx) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)", (path, kind, when, size, mode, mtime_ns, stored, history))
    # earlier attribute-only rows of this version were stored at the live path: now in history too
    db.execute("UPDATE versions SET history = ?, ino = ? WHERE path = ? AND ino = ? AND history IS NULL",
               (history, stored, path, ino))
    if is_dir:
        below = db.execute("SELECT id, path FROM versions WHERE path >= ? AND path < ? AND history IS NULL",
                           (path + b"/", path + b"0")).fetchall()
        for row_id, child in below:
            moved = history + bytes(child)[len(path):] if history else None
            db.execute("UPDATE versions SET live_to = COALESCE(live_to, ?), history = ? WHERE id = ?",
                       (when, moved, row_id))


def _apply_attrs(db, state, path, mode, mtime_ns, when) -> None:
    found = db.execute(f"SELECT {', '.join(COLUMNS)} FROM versions WHERE path = ? AND live_to IS NULL "
                       "ORDER BY live_from DESC LIMIT 1", (path,)).fetchone()
    if found is None:
        return
    row = _row(found)
    new_mode = row.mode if mode is None else (row.mode & ~0o7777) | stat.S_IMODE(mode)
    new_mtime = row.mtime_ns if mtime_ns is None else mtime_ns
    if (new_mode, new_mtime) == (row.mode, row.mtime_ns):
        return
    db.execute("UPDATE versions SET live_to = ? WHERE id = ?", (when, row.id))
    db.execute("INSERT INTO versions(path, type, live_from, size, mode, mtime_ns, ino, xxh128, xfer_sum, "
               "xfer_sum_kind, approx) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (path, row.type, when, row.size, new_mode, new_mtime, row.ino, row.xxh128, row.xfer_sum,
                row.xfer_sum_kind, row.approx))


_APPLY = {"live": _apply_live, "retire": _apply_retire, "attrs": _apply_attrs}


def hash_entry_at(dir_fd: int, name: bytes, st: os.stat_result) -> str | None:
    """xxh128 (hex) of a stored entry: a file's bytes, a symlink's target; None otherwise.

    Raises:
        OSError: it cannot be read.
    """
    if stat.S_ISLNK(st.st_mode):
        return xxhash.xxh128(os.readlink(name, dir_fd=dir_fd)).hexdigest()
    if not stat.S_ISREG(st.st_mode):
        return None
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int, buf_size: int = 1 << 20) -> str:
    """xxh128 (hex) of everything readable from ``fd`` (from its current offset)."""
    h = xxhash.xxh128()
    buf = bytearray(buf_size)
    view = memoryview(buf)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def now_ns() -> int:
    """The wall clock in ns (for callers without a history clock)."""
    return time.time_ns()


__all__ = ["Catalog", "CatalogWriter", "Row", "apply_ops", "at_bound", "catalog_file", "default_state_dir",
           "hash_entry_at", "kind_of", "module_catalog_file", "time_ns"]


def session_writer(module, on_error=None) -> CatalogWriter | None:
    """The catalog writer a push session of ``module`` (a ``ModuleConfig``) uses, or None.

    None when the module keeps no history or has ``catalog = no``. Nothing is
    opened until the first batch is flushed.
    """
    if not (module.history and getattr(module, "catalog", True)):
        return None
    return CatalogWriter(module_catalog_file(module), on_error=on_error)
