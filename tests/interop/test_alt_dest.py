"""--link-dest / --copy-dest / --compare-dest with history on (backupd's own guarantees).

What stock rsyncd does with these options (trees, hard-link groups,
itemized lines, exit codes) is compared in tests/differential
(scenarios_alt_dest.py). Here: what only backupd has, its history. A link
to a previous snapshot is a new name, so it keeps no version; a live file
an alternate replaces is kept; and no live name ever shares an inode with
a version in history, so nothing done to a live file can reach one.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import Dir, File, make_tree
from tests.interop.conftest import HISTORY, T0, assert_ok


def _inode(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def _live_inodes(module: Path) -> dict[tuple[int, int], list[str]]:
    out: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirs, files in os.walk(module):
        if Path(dirpath) == module and HISTORY in dirs:
            dirs.remove(HISTORY)
        for name in files:
            full = Path(dirpath, name)
            out.setdefault(_inode(full), []).append(str(full.relative_to(module)))
    return out


def _assert_history_apart(target) -> None:
    """No version in history is the inode of a live file."""
    live = _live_inodes(target.module)
    for rel, paths in target.history_files().items():
        for path in paths:
            assert _inode(path) not in live, f"history version {path} of {rel!r} is live as {live[_inode(path)]}"


def _client(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_tree(src, {
        "a.txt": File(b"alpha v1\n", mode=0o644, mtime=T0),
        "b.txt": File(b"bravo\n", mode=0o644, mtime=T0 + 1),
        "sub": Dir({"c.txt": File(b"charlie\n", mode=0o644, mtime=T0 + 2)}, mode=0o755, mtime=T0 + 3),
    })
    os.utime(src, (T0 + 4, T0 + 4))
    return src


def test_link_dest_rotation_keeps_no_version_and_replaced_files_are_kept(rsync_client, make_targets, tmp_path):
    target = make_targets(("backupd",))["backupd"]
    src = _client(tmp_path)
    assert_ok(target.push(rsync_client, "-a", f"{src}/", path="s1/"))
    (src / "a.txt").write_bytes(b"alpha v2, longer\n")
    os.utime(src / "a.txt", (T0 + 10, T0 + 10))
    assert_ok(target.push(rsync_client, "-a", "--link-dest=../s1", f"{src}/", path="s2/"))
    mod = target.module
    assert _inode(mod / "s2/b.txt") == _inode(mod / "s1/b.txt")
    assert _inode(mod / "s2/sub/c.txt") == _inode(mod / "s1/sub/c.txt")
    assert _inode(mod / "s2/a.txt") != _inode(mod / "s1/a.txt")
    assert (mod / "s2/a.txt").read_bytes() == b"alpha v2, longer\n"
    assert target.history_files() == {}, "a link to a previous snapshot is a new name, not a replaced version"

    # third push into s2 again, against s1, with a.txt back as in s1: s2's a.txt is replaced by a link
    (src / "a.txt").write_bytes(b"alpha v1\n")
    os.utime(src / "a.txt", (T0, T0))
    assert_ok(target.push(rsync_client, "-a", "--link-dest=../s1", f"{src}/", path="s2/"))
    assert _inode(mod / "s2/a.txt") == _inode(mod / "s1/a.txt")
    assert target.versions("s2/a.txt") == [b"alpha v2, longer\n"]
    assert set(target.history_files()) == {b"s2/a.txt"}
    _assert_history_apart(target)


def test_compare_dest_keeps_the_file_it_removes(rsync_client, make_targets, tmp_path):
    src = _client(tmp_path)
    seed = {"base": Dir({"a.txt": File(b"alpha v1\n", mode=0o644, mtime=T0)}, mtime=T0),
            "cur": Dir({"a.txt": File(b"an older a\n", mode=0o644, mtime=T0 - 50)}, mtime=T0)}
    target = make_targets(("backupd",), seed=seed)["backupd"]
    assert_ok(target.push(rsync_client, "-a", "--compare-dest=../base", f"{src}/", path="cur/"))
    assert not (target.module / "cur/a.txt").exists()  # rsyncd removes a file the compare dir matches
    assert target.versions("cur/a.txt") == [b"an older a\n"]
    assert (target.module / "cur/b.txt").read_bytes() == b"bravo\n"


def test_link_dest_into_history_copies_instead_of_linking(rsync_client, make_targets, tmp_path):
    target = make_targets(("backupd",))["backupd"]
    src = _client(tmp_path)
    assert_ok(target.push(rsync_client, "-a", f"{src}/", path="cur/"))
    (src / "a.txt").write_bytes(b"alpha v2\n")
    os.utime(src / "a.txt", (T0 + 20, T0 + 20))
    assert_ok(target.push(rsync_client, "-a", f"{src}/", path="cur/"))
    [day] = target.day_dirs()
    kept = target.history_files()[b"cur/a.txt"][0]
    nlink = os.lstat(kept).st_nlink
    (src / "a.txt").write_bytes(b"alpha v1\n")  # back to the version in history
    os.utime(src / "a.txt", (T0, T0))
    done = assert_ok(target.push(rsync_client, "-ai", f"--link-dest=/{HISTORY}/{day}/cur", f"{src}/",
                                 path="new/"))
    assert "a.txt" not in done.stdout  # an up-to-date alternate: not transferred
    new = target.module / "new/a.txt"
    assert new.read_bytes() == b"alpha v1\n"
    assert _inode(new) != _inode(kept) and os.lstat(kept).st_nlink == nlink  # copied, not linked
    os.chmod(src / "a.txt", 0o600)  # an attribute update of the live file must not reach history
    assert_ok(target.push(rsync_client, "-a", f"{src}/", path="new/"))
    assert os.lstat(kept).st_mode & 0o777 == 0o644
    _assert_history_apart(target)


def test_alt_dest_outside_the_module_is_confined(rsync_client, make_targets, tmp_path):
    outside = tmp_path / "outside"
    make_tree(outside, {"a.txt": File(b"alpha v1\n", mode=0o644, mtime=T0)})
    target = make_targets(("backupd",))["backupd"]
    src = _client(tmp_path)
    depth = len(target.module.parts)
    escape = "/".join([".."] * (depth + 2)) + str(outside)
    done = assert_ok(target.push(rsync_client, "-a", f"--link-dest={escape}", f"{src}/", path="s1/"))
    assert "arg does not exist" in done.stderr  # clamped into the module, where there is no such dir
    assert _inode(target.module / "s1/a.txt") != _inode(outside / "a.txt")
    assert os.lstat(outside / "a.txt").st_nlink == 1


def test_missing_alt_dir_warning_with_chroot_matches_rsyncd(rsync_client, make_targets, tmp_path):
    if os.geteuid() != 0:
        import pytest

        pytest.skip("rsyncd's chroot needs root")
    src = _client(tmp_path)
    seen = {}
    for kind, target in make_targets(params={"use chroot": True}).items():
        done = target.push(rsync_client, "-a", "--link-dest=../nope", "--link-dest=/gone/", f"{src}/", path="s2/")
        seen[kind] = (done.returncode, sorted(line for line in done.stderr.splitlines() if "arg" in line))
    assert seen["backupd"] == seen["rsyncd"]
    assert len(seen["rsyncd"][1]) == 2


def test_hard_links_with_compare_dest_are_compared_one_by_one(rsync_client, make_targets, tmp_path):
    # stock rsyncd 3.5.0 hangs here (the group waits for a leader it never writes): no oracle
    src = _client(tmp_path)
    os.link(src / "a.txt", src / "a-link")
    (src / "new.txt").write_bytes(b"new\n")
    os.link(src / "new.txt", src / "new-link")
    seed = {"base": Dir({"a.txt": File(b"alpha v1\n", mode=0o644, mtime=T0),
                         "a-link": File(b"alpha v1\n", mode=0o644, mtime=T0)}, mtime=T0)}
    target = make_targets(("backupd",), seed=seed)["backupd"]
    assert_ok(target.push(rsync_client, "-aH", "--compare-dest=../base", f"{src}/", path="cur/", timeout=30))
    cur = target.module / "cur"
    assert not (cur / "a.txt").exists() and not (cur / "a-link").exists()  # both match base
    assert (cur / "new.txt").read_bytes() == (cur / "new-link").read_bytes() == b"new\n"
    assert (cur / "b.txt").exists()
