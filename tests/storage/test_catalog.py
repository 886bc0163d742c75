"""The version catalog written by the commit path: intervals, restore at T, reconcile, prune, verify."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest

from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.catalog import NS, Catalog, CatalogWriter, at_bound, time_ns
from backupd.storage.prune import apply_prune, plan_prune
from backupd.storage.reconcile import apply_reconcile, plan_reconcile
from backupd.storage.restore_at import apply_restore, plan_restore
from backupd.storage.verify import verify_module

START = datetime(2024, 5, 17, 10, 0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def env(tmp_path):
    module = tmp_path / "mod"
    module.mkdir()
    clock = Clock()
    db = tmp_path / "state" / "mod.sqlite"

    def tree(catalog: bool = True) -> ModuleTree:
        writer = CatalogWriter(db) if catalog else None
        return ModuleTree(module, module="mod", history=HistoryStore(clock=clock), catalog=writer)

    return module, clock, db, tree


def put(tree: ModuleTree, path: bytes, data: bytes, mtime_s: int = 1_700_000_000, mode: int = 0o644) -> None:
    parent = path.rpartition(b"/")[0]
    if parent:
        tree.makedirs(parent, 0o755)
    with tree.create_staged(path, 0o600) as staged:
        staged.write(data)
        staged.commit(mtime_ns=mtime_s * NS, mode=mode)


def restored(tmp_path, db, module, path: bytes, when: datetime, name: str) -> dict[str, bytes | str]:
    out = tmp_path / name
    out.mkdir()
    with Catalog(db) as catalog, ModuleTree(module, module="mod") as src, ModuleTree(out) as dst:
        plan = plan_restore(catalog, path, at_bound(when), path.rpartition(b"/")[2] if path != b"." else b"")
        result = apply_restore(plan, src, dst)
    assert result.errors == []
    found = {}
    for dirpath, dirs, files in os.walk(out):
        for d in dirs:
            found[os.path.relpath(os.path.join(dirpath, d), out)] = "dir"
        for f in files:
            full = os.path.join(dirpath, f)
            found[os.path.relpath(full, out)] = open(full, "rb").read()
    return found


def test_versions_get_exact_intervals_and_restore_picks_the_live_one(env, tmp_path):
    module, clock, db, tree = env
    t1 = clock.tick(1)
    with tree() as t:
        put(t, b"f", b"v1")
    t2 = clock.tick(3)
    with tree() as t:
        put(t, b"f", b"v2")
    t3 = clock.tick(4)
    with tree() as t:
        put(t, b"f", b"v3")
    t4 = clock.tick(2)
    with tree() as t:
        t.delete(b"f")
    with Catalog(db) as catalog:
        rows = catalog.rows("path = ?", (b"f",))
    assert [(r.live_from, r.live_to) for r in rows] == [
        (time_ns(t1), time_ns(t2)), (time_ns(t2), time_ns(t3)), (time_ns(t3), time_ns(t4)), ]
    assert all(r.history and r.history.startswith(b"history-backup/2024-05-17/f") for r in rows)
    assert [r.xxh128 is not None for r in rows] == [True] * 3
    cases = [(t1 - timedelta(seconds=1), {}), (t1, {"f": b"v1"}), (t2 - timedelta(seconds=1), {"f": b"v1"}),
             (t2, {"f": b"v2"}), (t3 + timedelta(seconds=1), {"f": b"v3"}), (t4, {})]
    for n, (when, want) in enumerate(cases):
        assert restored(tmp_path, db, module, b"f", when, f"r{n}") == want, when


def test_tree_at_t_has_deleted_files_and_not_later_ones(env, tmp_path):
    module, clock, db, tree = env
    t1 = clock.tick(1)
    with tree() as t:
        put(t, b"proj/a", b"a1")
        put(t, b"proj/sub/b", b"b1")
    t2 = clock.tick(2)
    with tree() as t:
        t.delete(b"proj/sub")          # a directory goes to history whole
        put(t, b"proj/c", b"c1")
        put(t, b"proj/a", b"a2")
    t3 = clock.tick(2)
    with tree() as t:
        put(t, b"proj/sub/b", b"b2")   # re-created
    assert restored(tmp_path, db, module, b"proj", t1, "at1") == {
        "proj": "dir", "proj/a": b"a1", "proj/sub": "dir", "proj/sub/b": b"b1"}
    assert restored(tmp_path, db, module, b"proj", t2, "at2") == {"proj": "dir", "proj/a": b"a2", "proj/c": b"c1"}
    assert restored(tmp_path, db, module, b".", t3, "at3") == {
        "proj": "dir", "proj/a": b"a2", "proj/c": b"c1", "proj/sub": "dir", "proj/sub/b": b"b2"}


def test_restored_files_keep_mode_and_mtime(env, tmp_path):
    module, clock, db, tree = env
    t1 = clock.tick(1)
    with tree() as t:
        put(t, b"x", b"data", mtime_s=1_600_000_000, mode=0o640)
    clock.tick(2)
    with tree() as t:
        put(t, b"x", b"newer", mtime_s=1_650_000_000, mode=0o600)
    restored(tmp_path, db, module, b"x", t1, "out")
    st = os.stat(tmp_path / "out" / "x")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 1_600_000_000 * NS)


def test_intact_catalog_needs_no_repair_and_lost_rows_are_found(env):
    module, clock, db, tree = env
    clock.tick(1)
    with tree() as t:
        put(t, b"d/f", b"1")
    clock.tick(2)
    with tree() as t:
        put(t, b"d/f", b"2")
    with tree(catalog=False) as t, Catalog(db) as catalog:
        assert plan_reconcile(t, catalog, "history-backup", 0).repairs == []
    (old,) = (module / "history-backup" / "2024-05-17" / "d").iterdir()
    old.unlink()
    (module / "d" / "new").write_bytes(b"pushed by nobody")
    with tree(catalog=False) as t, Catalog(db) as catalog:
        plan = plan_reconcile(t, catalog, "history-backup", 0)
        assert sorted((r.kind, r.path) for r in plan.repairs) == [("live", b"d/new"), ("lost", b"d/f")]
        apply_reconcile(catalog, plan)
        assert plan_reconcile(t, catalog, "history-backup", 0).repairs == []


def test_unflushed_session_is_repaired_from_the_tree(env, tmp_path):
    """A session killed before its batch reached the catalog: the tree tells what happened."""
    module, clock, db, tree = env
    clock.now = start = datetime.now().replace(microsecond=0) - timedelta(seconds=30)  # history ctimes: real
    clock.tick(1)
    with tree() as t:
        put(t, b"f", b"v1")
    clock.tick(5)
    t = tree()
    put(t, b"f", b"v2")
    t.catalog._ops.clear()      # the SIGKILL: nothing of this session was flushed
    t.catalog = None
    t.close()
    with tree(catalog=False) as t, Catalog(db) as catalog:
        plan = plan_reconcile(t, catalog, "history-backup", 0)
        assert sorted(r.kind for r in plan.repairs) == ["live", "retired"]
        apply_reconcile(catalog, plan)
        rows = catalog.rows("path = ?", (b"f",))
    assert [r.approx for r in rows] == [1, 1]
    assert restored(tmp_path, db, module, b"f", start + timedelta(seconds=2), "early") == {"f": b"v1"}
    assert restored(tmp_path, db, module, b"f", clock.now + timedelta(days=1), "late") == {"f": b"v2"}


def test_prune_removes_rows_with_their_day_folder(env):
    module, clock, db, tree = env
    clock.tick(1)
    with tree() as t:
        put(t, b"f", b"v1")
    clock.tick(86400 * 3)
    with tree() as t:
        put(t, b"f", b"v2")
        put(t, b"f", b"v3")
    plan = plan_prune(module, clock.now + timedelta(days=10), 7, catalog_file=db)
    result = apply_prune(plan)
    assert result.errors == [] and result.rows == 2
    with Catalog(db) as catalog:
        assert [r.xxh128 is not None and r.live_to is None for r in catalog.rows()] == [True]


def test_verify_finds_a_flipped_byte_and_a_deleted_version(env):
    module, clock, db, tree = env
    clock.tick(1)
    with tree() as t:
        put(t, b"a", b"A" * 1000)
        put(t, b"b", b"B" * 10)
    clock.tick(2)
    with tree() as t:
        put(t, b"a", b"A2")
        put(t, b"b", b"B2")
    with tree(catalog=False) as t, Catalog(db) as catalog:
        assert verify_module(t, catalog).findings == []
        day = module / "history-backup" / "2024-05-17"
        blob = bytearray((day / "a").read_bytes())
        blob[500] ^= 1
        (day / "a").write_bytes(bytes(blob))
        (day / "b").unlink()
        result = verify_module(t, catalog)
    assert sorted((f.kind, f.path) for f in result.findings) == [("mismatch", b"a"), ("missing", b"b")]
    assert result.checked == 3


def test_restore_into_the_live_module_keeps_the_replaced_version(env):
    module, clock, db, tree = env
    t1 = clock.tick(1)
    with tree() as t:
        put(t, b"f", b"good")
    clock.tick(2)
    with tree() as t:
        put(t, b"f", b"broken")
    clock.tick(2)
    with Catalog(db) as catalog, tree() as src, tree() as dst:
        apply_restore(plan_restore(catalog, b"f", at_bound(t1), b"f"), src, dst)
    assert (module / "f").read_bytes() == b"good"
    with Catalog(db) as catalog:
        rows = catalog.rows("path = ?", (b"f",))
        assert [r.live_to is None for r in rows] == [False, False, True]
        kept = rows[1].history
    assert (module / os.fsdecode(kept)).read_bytes() == b"broken"


def test_two_sessions_flushing_in_either_order_agree(tmp_path):
    """Session A makes f live, session B replaces it; B's batch reaches the catalog first."""
    (tmp_path / "f").write_bytes(b"v1")
    st = os.lstat(tmp_path / "f")
    db = tmp_path / "c.sqlite"
    a, b = CatalogWriter(db), CatalogWriter(db)
    a.made_live(b"f", st, 10 * NS, xxh128="aa")
    b.retired(b"f", st, 20 * NS, b"history-backup/d/f")
    b.close()
    a.close()
    with Catalog(db) as catalog:
        (row,) = catalog.rows()
    assert (row.live_from, row.live_to, row.history, row.xxh128) == (10 * NS, 20 * NS, b"history-backup/d/f", "aa")


def test_verify_since_skips_versions_retired_before_it(env):
    module, clock, db, tree = env
    clock.tick(1)
    with tree() as t:
        put(t, b"a", b"old")
    t2 = clock.tick(10)
    with tree() as t:
        put(t, b"a", b"new")
    (module / "history-backup" / "2024-05-17" / "a").unlink()    # the version retired at t2
    with tree(catalog=False) as t, Catalog(db) as catalog:
        assert [f.kind for f in verify_module(t, catalog).findings] == ["missing"]
        later = verify_module(t, catalog, since_ns=time_ns(t2) + NS)
    assert later.findings == [] and later.checked == 1


def test_inplace_rewrite_is_a_new_version_and_the_copy_is_stored(env, tmp_path):
    module, clock, db, tree = env
    t1 = clock.tick(1)
    with tree() as t:
        put(t, b"f", b"first content")
    t2 = clock.tick(2)
    with tree() as t:
        f = t.open_inplace(b"f", 0o600)
        f.write(b"second")
        f.commit(mtime_ns=1_700_000_100 * NS, mode=0o644)
    with tree(catalog=False) as t, Catalog(db) as catalog:
        assert plan_reconcile(t, catalog, "history-backup", 0).repairs == []
        assert verify_module(t, catalog).findings == []
    assert restored(tmp_path, db, module, b"f", t1, "one") == {"f": b"first content"}
    assert restored(tmp_path, db, module, b"f", t2, "two") == {"f": b"second"}


def test_knows_live_answers_from_queued_ops_then_from_the_writers_connection(tmp_path, monkeypatch):
    """A stale-temp check per deleted name: after the first flush no connection is opened for it."""
    from backupd.storage import catalog as catalog_mod

    (tmp_path / "f").write_bytes(b"v1")
    st = os.lstat(tmp_path / "f")
    db = tmp_path / "c.sqlite"
    writer = CatalogWriter(db)
    assert not writer.knows_live(b"f")        # no catalog yet
    writer.made_live(b"f", st, 10 * NS)
    assert writer.knows_live(b"f")            # queued
    writer.flush()
    opened = []
    real = catalog_mod.Catalog
    monkeypatch.setattr(catalog_mod, "Catalog", lambda *a, **k: opened.append(k) or real(*a, **k))
    assert writer.knows_live(b"f") and not writer.knows_live(b"g")
    other = CatalogWriter(db)                 # another session's committed batch is seen too
    other.made_live(b"g", st, 11 * NS)
    other.close()
    assert writer.knows_live(b"g")
    writer.retired(b"f", st, 12 * NS, b"history-backup/d/f")
    writer.flush()
    assert not writer.knows_live(b"f")
    assert opened == [{}]                     # only `other`'s writer connection
    writer.close()


def test_sigkilled_session_keeps_its_flushed_batches_and_reconcile_finds_the_rest(env):
    """A session SIGKILLed mid-push: its committed batches (in the WAL it left) survive,
    its writer mark says a walk is needed, and the walk adds exactly the versions of the lost batch."""
    import signal

    from backupd.storage.catalog_state import left_marks

    module, clock, db, tree = env
    clock.now = datetime.now().replace(microsecond=0) - timedelta(seconds=30)  # history ctimes: real
    pid = os.fork()
    if pid == 0:  # the session: batches of 8 ops, killed with 6 installs queued
        try:
            t = tree()
            t.catalog.batch_ops = 8
            for i in range(21):
                put(t, b"d/f%02d" % i, b"v%d" % i)
            assert len(t.catalog._ops) == 6 and (module.parent / "state" / "mod.sqlite-wal").stat().st_size > 0
        except BaseException:
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert len(left_marks(db)) == 1
    with Catalog(db, readonly=True) as catalog:   # recovered from the WAL the kill left
        flushed = {r.path for r in catalog.rows("type = 'file'")}
    assert flushed == {b"d/f%02d" % i for i in range(15)}
    with tree(catalog=False) as t, Catalog(db) as catalog:
        plan = plan_reconcile(t, catalog, "history-backup", 0)
        assert sorted((r.kind, r.path) for r in plan.repairs if r.path.startswith(b"d/f")) == [
            ("live", b"d/f%02d" % i) for i in range(15, 21)]
        apply_reconcile(catalog, plan)
        assert plan_reconcile(t, catalog, "history-backup", 0).repairs == []
        assert len(catalog.rows("type = 'file' AND live_to IS NULL")) == 21
