"""Coalescing and batch planning (pure), held to a model of the source, the watcher and rsync."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backupd.pusher.coalesce import Change, Kind, PathEvent, coalesce, merge, plan_batch

U, T, D = Kind.UPDATE, Kind.TREE, Kind.DELETE


def test_events_collapse_per_path_last_word_wins():
    events = [PathEvent(b"f", U), PathEvent(b"f", U), PathEvent(b"g", U), PathEvent(b"g", D)]
    assert coalesce(events) == {b"f": Change(U), b"g": Change(D)}


def test_deleted_dir_swallows_its_children():
    pending = coalesce([PathEvent(b"d/x", U), PathEvent(b"d/sub/y", D), PathEvent(b"d", D, True),
                        PathEvent(b"d-sibling", U)])
    batch = plan_batch(pending)
    assert batch.files == (b"d", b"d-sibling")
    assert batch.force and not batch.recursive
    assert set(batch.covered) == set(pending)


def test_dir_replaced_by_a_symlink_or_file_swallows_its_old_children():
    # rm -rf current && ln -s rel/v1 current (or echo > current), all in one window
    pending = coalesce([PathEvent(b"current/sub/x", D), PathEvent(b"current/sub", D, True),
                        PathEvent(b"current/y", D), PathEvent(b"current", D, True),
                        PathEvent(b"current", U, False), PathEvent(b"rel/v1/a", U)])
    batch = plan_batch(pending)
    assert batch.files == (b"current", b"rel/v1/a")
    assert batch.force and not batch.recursive
    assert set(batch.covered) == set(pending)


def test_tree_swallows_children_and_defers_plain_dirs():
    pending = coalesce([PathEvent(b"moved", T, True), PathEvent(b"moved/a", U), PathEvent(b"other", U, True),
                        PathEvent(b"other/f", U)])
    batch = plan_batch(pending)
    assert batch.files == (b"moved", b"other/f")
    assert batch.recursive and not batch.force
    assert batch.deferred == (b"other",)
    assert b"other" not in batch.covered and b"moved/a" in batch.covered
    # the next window sends the deferred dir without -r
    again = plan_batch({b"other": pending[b"other"]})
    assert again.files == (b"other",) and not again.recursive


def test_merge_rules():
    dir_gone = Change(D, True, force=True)
    assert merge(dir_gone, Change(U, True)) == Change(T, True, True)  # re-created dir: old content must go
    assert merge(dir_gone, Change(U, False)) == Change(U, False, True)  # dir replaced by a file: --force
    assert merge(Change(T, True), Change(U, True)) == Change(T, True)
    assert merge(Change(T, True), Change(D, True, True)) == Change(D, True, True)
    assert merge(Change(D, False), Change(U, False)) == Change(U, False)


# ---------------------------------------------------------------- model


Tree = dict[bytes, bytes | None]  # path -> file content, None for a directory
NAMES = [b"a", b"b", b"c"]


def children(tree: Tree, path: bytes) -> list[bytes]:
    return [p for p in tree if p.startswith(path + b"/")]


def parent_ok(tree: Tree, path: bytes) -> bool:
    head = path.rpartition(b"/")[0]
    return not head or (head in tree and tree[head] is None)


def apply_op(src: Tree, op: tuple[int, int, int, int]) -> list[PathEvent]:
    """Apply one random op to the source model; the events the watcher would report."""
    kind, i, j, n = op
    dirs = sorted([b""] + [p for p, v in src.items() if v is None])
    paths = sorted(src)
    base = dirs[i % len(dirs)]
    new = (base + b"/" if base else b"") + NAMES[j % len(NAMES)]
    if kind == 0 and new not in src and parent_ok(src, new):  # create or overwrite a file
        src[new] = b"v%d" % n
        return [PathEvent(new, U)]
    if kind == 1 and new not in src:  # mkdir (the watcher reports a TREE)
        src[new] = None
        return [PathEvent(new, T, True)]
    if not paths:
        return []
    victim = paths[i % len(paths)]
    if kind == 2 and src[victim] is not None:  # modify
        src[victim] = b"m%d" % n
        return [PathEvent(victim, U)]
    if kind == 3:  # rm -r: children first, as inotify reports them
        events = [PathEvent(c, D, src[c] is None) for c in sorted(children(src, victim), reverse=True)]
        for c in children(src, victim):
            del src[c]
        is_dir = src.pop(victim) is None
        return events + [PathEvent(victim, D, is_dir)]
    if kind == 4 and new not in src and not new.startswith(victim + b"/") and new != victim \
            and parent_ok(src, new):  # mv victim new
        moved = {victim: src.pop(victim)} | {c: src.pop(c) for c in children(src, victim)}
        for p, v in moved.items():
            src[new + p[len(victim):]] = v
        is_dir = moved[victim] is None
        return [PathEvent(victim, D, is_dir), PathEvent(new, T if is_dir else U, is_dir)]
    return []


def rsync_batch(src: Tree, dst: Tree, files, recursive: bool, force: bool) -> None:
    """What ``rsync -a -R --files-from --delete-missing-args [-r --delete] [--force]`` does to ``dst``."""
    for path in files:
        if path == b".":
            continue
        if path in src:
            parts = path.split(b"/")
            for k in range(1, len(parts)):  # implied dirs
                implied = b"/".join(parts[:k])
                if dst.get(implied, b"") is not None:
                    for c in children(dst, implied):
                        del dst[c]
                    dst[implied] = None
            if dst.get(path) is None and path in dst and src[path] is not None and children(dst, path):
                if not force:
                    continue  # "cannot delete non-empty directory"
                for c in children(dst, path):
                    del dst[c]
            dst[path] = src[path]
            if src[path] is None and recursive:
                for c in children(dst, path):
                    del dst[c]
                dst.update({c: src[c] for c in children(src, path)})
        elif path in dst:
            if dst[path] is None and children(dst, path) and not force:
                continue
            for c in children(dst, path):
                del dst[c]
            del dst[path]


OPS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 20), st.integers(0, 5), st.integers(0, 99)),
               max_size=25)


@settings(max_examples=150)
@given(st.lists(OPS, min_size=1, max_size=3), OPS)
def test_batches_make_the_target_equal_the_source(windows, seed_ops):
    src: Tree = {}
    for op in seed_ops:
        apply_op(src, op)
    dst = dict(src)  # after the initial full sync
    pending: dict[bytes, Change] = {}
    for window in windows:
        for op in window:
            coalesce(apply_op(src, op), pending)
        for _ in range(3):  # a batch, then the deferred dirs in the next window
            batch = plan_batch(pending)
            rsync_batch(src, dst, batch.files, batch.recursive, batch.force)
            pending = {p: pending[p] for p in batch.deferred}
            if not pending:
                break
        assert not pending
    assert dst == src


def test_without_force_a_deleted_full_dir_would_stay():
    """The model's own check: the trap is real in it (so the test above means something)."""
    src: Tree = {b"d": None}
    dst: Tree = {b"d": None, b"d/x": b"1"}
    rsync_batch({}, dst, [b"d"], False, force=False)
    assert b"d" in dst
    rsync_batch({}, dst, [b"d"], False, force=True)
    assert dst == {}
    dst = {}
    src = {b"d": None, b"d/x": b"1"}
    rsync_batch(src, dst, [b"d"], recursive=False, force=False)
    assert dst == {b"d": None}  # arrives empty without -r
