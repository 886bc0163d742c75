"""Pushes whose client recurses incrementally (its default): trees of many directories.

Sibling directories with contents, empty ones, deep nesting: each directory
is its own sub-list, so these exercise the order in which rsyncd's generator
makes, itemizes, deletes in and finishes directories list by list, and the
0700 directories it makes inside a parent's list before their own list.

Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

from tests.differential.harness import T0, Change
from tests.differential.scenarios import hardlink, push, scenario, write
from tests.helpers import Dir, File


def many_dirs(tops: int = 6, subs: int = 3, files: int = 3, tag: bytes = b"") -> dict:
    """``tops`` sibling dirs, each with ``subs`` subdirs of ``files`` files, an empty dir and a deep chain."""
    tree: dict = {}
    for t in range(tops):
        top = {f"f{i}.txt": File(b"top %d file %d\n" % (t, i) + tag, mtime=T0 + i) for i in range(files)}
        for s in range(subs):
            top[f"s{s}"] = Dir({f"g{i}.dat": File(b"%d/%d/%d\n" % (t, s, i) + tag, mode=0o640, mtime=T0 + 9)
                                for i in range(files)}, mode=0o750, mtime=T0 + 20 + s)
        top["empty"] = Dir({}, mode=0o700, mtime=T0 + 30)
        tree[f"d{t:02d}"] = Dir(top, mode=0o755, mtime=T0 + 40 + t)
    deep: dict = {"leaf.txt": File(b"leaf\n", mtime=T0)}
    for level in range(6):
        deep = {f"l{level}": Dir(deep, mtime=T0 + level), f"at{level}.txt": File(b"%d\n" % level, mtime=T0)}
    tree["deep"] = Dir(deep, mtime=T0 + 50)
    tree["a-b"] = Dir({"x": File(b"x\n", mtime=T0)}, mtime=T0)  # sorts before "a/" ('-' < '/')
    tree["a"] = Dir({"y": File(b"y\n", mtime=T0)}, mtime=T0)
    tree["top.txt"] = File(b"top\n", mtime=T0)
    return tree


def client_tree(**kw) -> dict:
    return {"src": Dir(many_dirs(**kw), mode=0o755, mtime=T0 + 99)}


def seeded() -> dict:
    """The module after an older backup: some dirs changed, extras to delete at several depths."""
    tree = many_dirs(tops=5, tag=b"old")
    tree["d01"].entries["extra.txt"] = File(b"extra\n", mtime=T0)
    tree["d02"].entries["s1"].entries["gone"] = Dir({"z": File(b"z\n", mtime=T0)}, mtime=T0)
    tree["deep"].entries["l5"].entries["l4"].entries["old.txt"] = File(b"old\n", mtime=T0)
    tree["d03"] = File(b"a file where the client has a dir\n", mtime=T0)
    tree["stale"] = Dir({"q": File(b"q\n", mtime=T0)}, mtime=T0)
    return tree


def _drop_dir(base) -> None:
    import shutil

    shutil.rmtree(base / "client" / "src" / "d04")
    (base / "client" / "src" / "d00" / "s1" / "new.txt").write_bytes(b"new\n")


scenario("push-inc-many-dirs-verbose", push("-av"), client=client_tree())
scenario("push-inc-many-dirs-delete", push("-ai", "--delete", "--force"), client=client_tree(), seed=seeded())
scenario("push-inc-second-push-delete", push("-ai"), Change(_drop_dir, "drop d04, add d00/s1/new.txt"),
         push("-ai", "--delete"), client=client_tree())
scenario("push-inc-no-times", push("-rlpi"), client=client_tree(tops=3))
scenario("push-inc-omit-dir-times", push("-aiO"), client=client_tree(tops=3))
scenario("push-inc-dry-run-delete", push("-ain", "--delete"), client=client_tree(), seed=seeded())
scenario("push-inc-existing", push("-ai", "--existing"), client=client_tree(), seed=seeded())
scenario("push-inc-nested-exclude", push("-ai"), client=client_tree(tops=3),
         params={"exclude": "d01/s1/ empty/"})
scenario("push-inc-client-exclude-delete", push("-ai", "--delete", "--exclude=s2/"), client=client_tree(),
         seed=seeded())
scenario("push-inc-dir-no-slash", push("-ai", src="src", dest="renamed"), client=client_tree(tops=2))
scenario("push-inc-delete-during-stats", push("-a", "--delete-during", "--stats"), client=client_tree(),
         seed=seeded())
scenario("push-inc-delete-delay", push("-ai", "--delete-delay"), client=client_tree(), seed=seeded())
scenario("push-inc-hard-links-verbose", hardlink("client/src/d00/f0.txt", "client/src/d01/s0/linked.txt"),
         hardlink("client/src/d00/f0.txt", "client/src/top-link.txt"), push("-aHv"), client=client_tree(tops=2))
scenario("push-no-inc-delete-during-stats", push("-a", "--no-inc-recursive", "--delete-during", "--stats"),
         client=client_tree(), seed=seeded())
scenario("push-inc-link-dest-hard-links-verbose",
         hardlink("client/src/d00/f0.txt", "client/src/d01/s0/linked.txt"), push("-aH", dest="s1/"),
         push("-aHv", "--link-dest=../s1", dest="s2/"), client=client_tree(tops=2))


def _hlink_snapshot(dest_opt: str) -> None:
    """-H groups against an earlier snapshot, in other lists: one unchanged, one broken up, one new."""
    scenario(f"push-inc-{dest_opt}-dest-hard-links-itemized",
             hardlink("client/src/d00/f0.txt", "client/src/d01/s0/linked.txt"),
             hardlink("client/src/d00/f1.txt", "client/src/d02/f1-link.txt"), push("-aH", dest="s1/"),
             write("client/src/d00/f1.txt", b"rewritten: the group is broken\n"),
             hardlink("client/src/d01/f0.txt", "client/src/d03/s1/new-link.txt"),
             push("-aHi", f"--{dest_opt}-dest=../s1", dest="s2/"), client=client_tree(tops=4))


_hlink_snapshot("link")
_hlink_snapshot("copy")
# no --compare-dest variant: stock rsyncd 3.5.0 cannot do -H --compare-dest incrementally (a group
# spanning lists fails with "File-list index 36 not in 92 - 120 (finish_hard_link)", exit 2; one
# within a list hangs the transfer); the -H --compare-dest scenarios run with --no-inc-recursive
