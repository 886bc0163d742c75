"""History versions stay immutable through shared inodes with -H (issue 15.5).

Two ways a live name could share an inode with a version in history, and so
carry a later chmod/utime of the live name into the version: a file with
other live links (``-H``) displaced by a push, and a follower whose hard-link
leader is a path inside history. After either, an attribute-only update of
the live file leaves every history version byte- and metadata-identical.
"""

from __future__ import annotations

import os
import stat

from tests.interop.conftest import T0, show


def _snapshot(target) -> dict[bytes, tuple]:
    """Every history file: content, mode, mtime_ns, inode."""
    out = {}
    for rel, paths in target.history_files().items():
        for p in paths:
            st = p.lstat()
            out[os.fsencode(p)] = (rel, p.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_ino)
    return out


def _push(target, client, src):
    done = target.push(client, "-aH", f"{src}/")
    assert done.returncode == 0, show(done)
    return done


def test_a_displaced_file_with_live_links_is_copied_into_history(backupd_target, rsync_clients, tmp_path):
    client, target, src = rsync_clients["3.5.0"], backupd_target, tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("v1\n")
    os.chmod(src / "a", 0o644)
    os.utime(src / "a", (T0, T0))
    os.link(src / "a", src / "b")
    _push(target, client, src)
    os.unlink(src / "a")  # a gets new content; b keeps the old inode
    (src / "a").write_text("v2\n")
    os.utime(src / "a", (T0 + 10, T0 + 10))
    _push(target, client, src)
    before = _snapshot(target)
    assert [v[:4] for v in before.values()] == [(b"a", b"v1\n", 0o644, T0 * 10**9)]
    live_b = (target.module / "b").lstat()
    assert all(v[4] != live_b.st_ino for v in before.values()), "history shares the live file's inode"
    os.chmod(src / "b", 0o4777)  # attribute-only updates of the live file
    os.utime(src / "b", (T0 + 99, T0 + 99))
    _push(target, client, src)
    assert stat.S_IMODE((target.module / "b").lstat().st_mode) == 0o4777
    after = _snapshot(target)
    assert {k: after.get(k) for k in before} == before  # (later pushes may add versions of their own)
    target.server.stop()  # the catalog knows the copy's inode: a restart's reconcile repairs nothing
    target.server.start()
    assert "catalog reconciled" in target.server.log() and "repair lost" not in target.server.log()


def test_a_follower_never_links_to_a_version_inside_history(backupd_target, rsync_clients, tmp_path):
    client, target, src = rsync_clients["3.5.0"], backupd_target, tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("v1\n")
    os.utime(src / "a", (T0, T0))
    _push(target, client, src)
    (src / "a").write_text("v2\n")
    os.utime(src / "a", (T0 + 10, T0 + 10))
    _push(target, client, src)
    before = _snapshot(target)
    (kept,) = [os.fsdecode(k) for k in before]
    rel = os.path.relpath(kept, target.module)  # history-backup/<day>/a
    attack = tmp_path / "attack"
    (attack / os.path.dirname(rel)).mkdir(parents=True)
    (attack / rel).write_text("v1\n")
    os.link(attack / rel, attack / "x")  # x's hard-link leader is the history path
    done = target.push(client, "-aH", f"{attack}/")
    assert done.returncode == 23, show(done)
    assert "history folder" in done.stderr
    x = target.module / "x"
    assert not x.exists() or x.lstat().st_ino not in {v[4] for v in before.values()}
    if x.exists():
        os.chmod(x, 0o4777)
    after = _snapshot(target)
    assert {k: after.get(k) for k in before} == before
