"""Pulls with incremental recursion over many directories: a file list per directory.

A tree of about 500 entries: sibling dirs with contents, empty dirs, a
chain of nested dirs 40 deep, names that sort awkwardly (``a-b`` before
``a/``), a dir of 300 files, hard links across directories (-H across
lists). Pulled with -av, with --delete into a client tree that has
extraneous files and dirs at every depth (-a --stats: with -v the client's
deletions and received names interleave by timing, as they do with
rsyncd), into a partly current tree with -ai, a subdir without a slash (a
one-entry first list), and with --delete-after (the client then does not
offer incremental recursion); and 2400 entries in 40 dirs, more than the
sender's 1000-entry lookahead, with -av and with --delete.

Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.differential.harness import T0, Change
from tests.differential.scenarios import hardlink, pull, scenario
from tests.helpers import Dir, File, Symlink, make_tree


def _chain(depth: int) -> Dir:
    node = Dir({"leaf.txt": File(b"leaf\n", mtime=T0)}, mtime=T0)
    for level in range(depth, 0, -1):
        node = Dir({f"f{level}": File(f"level {level}\n".encode(), mtime=T0 + level), f"d{level}": node},
                   mtime=T0 + level)
    return node


def many_dirs_tree() -> dict:
    """The module's tree (about 500 entries, 80 directories)."""
    siblings = {
        f"s{i:02d}": Dir({f"n{j}.txt": File(f"{i}.{j}\n".encode(), mtime=T0 + j) for j in range(i % 5)}
                         | ({f"inner{i}": Dir({"x": File(b"x\n", mtime=T0)}, mtime=T0)} if i % 3 == 0 else {}),
                         mtime=T0 + i)
        for i in range(30)
    }
    empties = {f"empty{i}": Dir({}, mtime=T0 + i) for i in range(8)}
    return {
        "top.txt": File(b"top\n", mtime=T0),
        "link": Symlink("top.txt", mtime=T0),
        "a": Dir({"b": Dir({"c": Dir({}, mtime=T0)}, mtime=T0), "f": File(b"af\n", mtime=T0)}, mtime=T0),
        "a-b": Dir({"y": File(b"y\n", mtime=T0), "sub": Dir({"t": File(b"t\n", mtime=T0)}, mtime=T0)},
                   mtime=T0),
        "a.b": File(b"dot\n", mtime=T0),
        "deep": _chain(40),
        "wide": Dir({f"w{k:03d}": File(f"{k}\n".encode(), mtime=T0) for k in range(300)}, mtime=T0),
        "sibs": Dir(siblings, mtime=T0),
        **empties,
    }


def _client_dst(base: Path) -> None:
    """A client tree with extraneous entries at every depth, some same, some changed."""
    spec = {
        "top.txt": File(b"top\n", mtime=T0),
        "gone.txt": File(b"gone\n", mtime=T0),
        "a": Dir({"b": Dir({"c": Dir({"old": File(b"o\n", mtime=T0)}, mtime=T0),
                            "stale": Dir({"s": File(b"s\n", mtime=T0)}, mtime=T0)}, mtime=T0)}, mtime=T0),
        "sibs": Dir({"s04": Dir({"n0.txt": File(b"changed\n", mtime=T0 - 50), "extra": File(b"e\n", mtime=T0)},
                                mtime=T0),
                     "s99": Dir({"z": File(b"z\n", mtime=T0)}, mtime=T0)}, mtime=T0),
        "empty3": Dir({"junk": File(b"j\n", mtime=T0)}, mtime=T0),
        "wide": Dir({"w000": File(b"0\n", mtime=T0), "w999": File(b"extra\n", mtime=T0)}, mtime=T0),
        "deep": Dir({"d1": Dir({"d2": Dir({"d3": Dir({"extra3": File(b"e\n", mtime=T0)}, mtime=T0)},
                                          mtime=T0)}, mtime=T0)}, mtime=T0),
    }
    make_tree(base / "client" / "dst", spec)


def _partly_current(base: Path) -> None:
    """The client holds an earlier pull of half the siblings (same content and times)."""
    tree = many_dirs_tree()
    make_tree(base / "client" / "dst", {"sibs": Dir({k: v for k, v in tree["sibs"].entries.items()
                                                      if int(k[1:]) % 2 == 0}, mtime=T0),
                                        "wide": tree["wide"]})
    os.utime(base / "client" / "dst" / "sibs", (T0, T0))


CLIENT_DST = Change(_client_dst, "client dst with extraneous entries")
PARTLY_CURRENT = Change(_partly_current, "client dst with half the siblings")
CROSS_LINKS = (hardlink("mod/top.txt", "mod/sibs/s01/top-link"),
               hardlink("mod/wide/w007", "mod/deep/d1/d2/w-link"))

scenario("pull-inc-many-dirs", pull("-av"), seed=many_dirs_tree())
# -a, not -av: the client's generator prints its deletions as it walks the lists while the
# names its receiver logs reach it when they do, so with -v the two interleave by timing
# (with rsyncd as with backupd); the tree and the counts are what must match
scenario("pull-inc-many-dirs-delete", CLIENT_DST, pull("-a", "--delete", "--stats"), seed=many_dirs_tree())
scenario("pull-inc-many-dirs-itemize", PARTLY_CURRENT, pull("-ai", "--delete", "--stats"),
         seed=many_dirs_tree())
scenario("pull-inc-subdir-noslash", pull("-av", path="sibs"), seed=many_dirs_tree())
scenario("pull-inc-delete-after", CLIENT_DST, pull("-av", "--delete-after"), seed=many_dirs_tree())
scenario("pull-inc-hardlinks", *CROSS_LINKS, pull("-aviH"), seed=many_dirs_tree())
scenario("pull-inc-no-inc-recursive", CLIENT_DST, pull("-av", "--no-inc-recursive"), seed=many_dirs_tree())


def lookahead_tree() -> dict:
    """About 2400 entries in 40 dirs: more than the sender's 1000-entry lookahead of lists."""
    return {f"d{i:02d}": Dir({f"f{j:02d}": File(f"{i}/{j}\n".encode(), mtime=T0 + j) for j in range(60)},
                             mtime=T0 + i) for i in range(40)}


def _lookahead_dst(base: Path) -> None:
    make_tree(base / "client" / "dst", {"d05": Dir({"old": File(b"o\n", mtime=T0)}, mtime=T0),
                                        "d39": Dir({"f59": File(b"stale\n", mtime=T0 - 9)}, mtime=T0)})


scenario("pull-inc-lookahead", pull("-av"), seed=lookahead_tree())
scenario("pull-inc-lookahead-delete", Change(_lookahead_dst, "client dst with extraneous files"),
         pull("-a", "--delete", "--stats"), seed=lookahead_tree())
