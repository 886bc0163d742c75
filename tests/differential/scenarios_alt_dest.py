"""Scenarios for --link-dest, --copy-dest and --compare-dest (rsnapshot-style rotations).

Every push lands in a snapshot dir of the module (``s1/``, ``s2/``, ``s3/``);
later ones name earlier ones as alternate basis dirs, the way rsnapshot and
rsync-time-backup do (``--link-dest=../previous``). The harness compares
trees (including which files are hard links of which), itemized lines and
exit codes with stock rsyncd's. Imported by scenarios.py, which holds the list.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.differential.harness import T0, Change
from tests.differential.scenarios import (
    BIG,
    BIG2,
    push,
    remove,
    scenario,
    src_tree,
    write,
)
from tests.helpers import Dir, File, Symlink


def _chmod(rel: str, mode: int) -> Change:
    return Change(lambda base: os.chmod(base / rel, mode), f"chmod {rel}")


def _touch(rel: str, mtime: int) -> Change:
    return Change(lambda base: os.utime(base / rel, (mtime, mtime)), f"mtime {rel}")


def _fifo(rel: str) -> Change:
    def fn(base: Path) -> None:
        os.mkfifo(base / rel)
        os.utime(base / rel, (T0, T0))

    return Change(fn, f"mkfifo {rel}")


def rotation(kind: str, *opts: str) -> tuple:
    """Three pushes: s1 full, s2 against s1, s3 against s2 then s1; the client changes between."""
    flag = f"--{kind}-dest"
    return (
        push("-ai", *opts, dest="s1/"),
        write("client/src/a.txt", b"ALPHA changed\n", mtime=T0 + 50),
        _touch("client/src/b.txt", T0 + 60),
        _chmod("client/src/x.log", 0o600),
        write("client/src/new.txt", b"new in s2\n", mtime=T0 + 70),
        _touch("client/src", T0 + 71),  # dir mtimes fixed: "now" would make the quick check racy
        push("-ai", *opts, f"{flag}=../s1", dest="s2/"),
        write("client/src/sub/c.txt", b"charlie, third version\n", mtime=T0 + 80),
        remove("client/src/x.log"),
        remove("client/src/link"),
        Change(lambda base: os.symlink("b.txt", base / "client/src/link"), "retarget link"),
        _touch("client/src", T0 + 81),
        _touch("client/src/sub", T0 + 82),
        push("-ai", *opts, f"{flag}=../s2", f"{flag}=../s1", dest="s3/"),
    )


for _kind in ("link", "copy", "compare"):
    scenario(f"{_kind}-dest-rotation", *rotation(_kind), client=src_tree())
    scenario(f"{_kind}-dest-rotation-ii", *rotation(_kind, "-i"), client=src_tree())
    scenario(f"{_kind}-dest-existing-dest", push("-ai", f"--{_kind}-dest=../s1", dest="s2/"),
             client=src_tree(),
             seed={"s1": src_tree()["src"],
                   "s2": Dir({"a.txt": File(b"different\n", mtime=T0 + 99),
                              "b.txt": File(b"bravo bravo\n", mode=0o600, mtime=T0 + 1),
                              "sub": Dir({}, mtime=T0)}, mtime=T0)})
    scenario(f"{_kind}-dest-delta-basis",
             push("-ai", "--stats", f"--{_kind}-dest=../s1", dest="s2/", delta=True),
             client={"src": Dir({"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900)},
                                mode=0o755, mtime=T0)},
             seed={"s1": Dir({"big.bin": File(BIG[:90000], mode=0o644, mtime=T0)}, mtime=T0)})

scenario("link-dest-absolute", push("-ai", dest="s1/"), push("-ai", "--link-dest=/s1", dest="s2/"),
         client=src_tree())
scenario("link-dest-missing", push("-ai", "--link-dest=../nope", dest="s2/"), client=src_tree())
scenario("link-dest-missing-absolute", push("-ai", "--link-dest=/nope", dest="s2/"),
         client=src_tree())
scenario("link-dest-not-a-dir", push("-ai", "--link-dest=../f", dest="s2/"), client=src_tree(),
         seed={"f": File(b"a file\n", mtime=T0)})
scenario("link-dest-escape", push("-ai", dest="s1/"),
         push("-ai", "--link-dest=../../../../s1", dest="s2/"),
         push("-ai", "--link-dest=../../../../../etc", dest="s3/"), client=src_tree())
scenario("link-dest-escape-absolute", push("-ai", dest="s1/"),
         push("-ai", "--link-dest=/../../s1/", dest="s2/"), client=src_tree())
scenario("link-dest-nested-dest", push("-ai", dest="daily/s1/"),
         push("-ai", "--link-dest=../s1", dest="daily/s2/"),
         push("-ai", "--link-dest=../../daily/s2", dest="weekly/s3/"), client=src_tree())
scenario("link-dest-into-existing-root", push("-ai", "--link-dest=s1"), client=src_tree(),
         seed={"s1": src_tree()["src"]})
scenario("link-dest-checksum", push("-ai", dest="s1/"),
         write("client/src/a.txt", b"alphA\n", mtime=T0),
         push("-aic", "--link-dest=../s1", dest="s2/"), client=src_tree())
scenario("link-dest-size-only", push("-ai", dest="s1/"),
         write("client/src/a.txt", b"alphA\n", mtime=T0 + 5),
         push("-ai", "--size-only", "--link-dest=../s1", dest="s2/"), client=src_tree())
scenario("link-dest-no-times", push("-rli", dest="s1/"),
         push("-rli", "--link-dest=../s1", dest="s2/"), client=src_tree())
scenario("link-dest-dry-run", push("-ai", dest="s1/"),
         push("-ain", "--link-dest=../s1", dest="s2/"), client=src_tree())
scenario("link-dest-fifo", _fifo("client/src/pipe"), push("-ai", dest="s1/"),
         push("-ai", "--link-dest=../s1", dest="s2/"), client=src_tree())
scenario("link-dest-dirs-differ", push("-ai", dest="s1/"), _touch("client/src/sub", T0 + 40),
         _chmod("client/src/sub/deep", 0o700),
         push("-ai", "--link-dest=../s1", dest="s2/"), client=src_tree())
# not --compare-dest: stock rsyncd 3.5.0 hangs on -H --compare-dest when a group's first member matches
for _kind in ("link", "copy"):
    for _ii in ((), ("-i",)):
        scenario(f"{_kind}-dest-hardlinks" + ("-ii" if _ii else ""),
                 Change(lambda b: os.link(b / "client/src/a.txt", b / "client/src/a-link"), "link a"),
                 Change(lambda b: os.link(b / "client/src/b.txt", b / "client/src/sub/b-link"),
                        "link b"),
                 push("-aiH", *_ii, dest="s1/"),
                 Change(lambda b: os.link(b / "client/src/x.log", b / "client/src/x-link"), "link x"),
                 _touch("client/src", T0 + 30),
                 _touch("client/src/sub", T0 + 31),
                 push("-aiH", *_ii, f"--{_kind}-dest=../s1", dest="s2/"),
                 client=src_tree())
scenario("link-dest-symlink-retarget", push("-ai", dest="s1/"), remove("client/src/link"),
         Change(lambda base: os.symlink("x.log", base / "client/src/link"), "retarget link"),
         push("-ai", "--link-dest=../s1", dest="s2/"), client=src_tree())
scenario("link-dest-single-file", push("-ai", dest="s1/"),
         push("-ai", "--link-dest=../s1", src="src/a.txt", dest="s2/"), client=src_tree(),
         seed={"s2": Dir({}, mtime=T0)})
scenario("link-dest-type-differs", push("-ai", dest="s1/"), remove("client/src/b.txt"),
         Change(lambda base: os.symlink("a.txt", base / "client/src/b.txt"), "b.txt symlink"),
         push("-ai", "--link-dest=../s1", dest="s2/"), client=src_tree(),
         seed={"s1": Dir({"link": File(b"not a link\n", mtime=T0)}, mtime=T0)})
scenario("copy-dest-symlinks", push("-ai", dest="s1/"),
         push("-ai", "--copy-dest=../s1", dest="s2/"),
         client=src_tree(rel=Symlink("sub/c.txt", mtime=T0 + 9)))
scenario("link-dest-delete-into-existing", push("-ai", dest="s1/"),
         push("-ai", "--delete", "--link-dest=../s1", dest="s2/"), client=src_tree(),
         seed={"s2": Dir({"stale.txt": File(b"stale\n", mtime=T0), "a.txt": File(b"old a\n", mtime=T0)},
                         mtime=T0)})
scenario("link-dest-relative", push("-aiR", dest="s1/", src="src/./sub"),
         push("-aiR", "--link-dest=../s1", dest="s2/", src="src/./sub"),
         push("-aiR", "--link-dest=../s2", dest="s3/", src="src/./sub/deep"), client=src_tree())
scenario("link-dest-whole-file-basis", push("-ai", dest="s1/"),
         write("client/src/a.txt", b"alpha, grown\n", mtime=T0 + 3),
         push("-aiW", "--link-dest=../s1", dest="s2/"), client=src_tree())
scenario("link-dest-many-dirs", push("-ai", dest="s1/"),
         *[push("-ai", *[f"--link-dest=../m{i}" for i in range(19)], "--link-dest=../s1",
                dest="s2/")], client=src_tree())
# --partial-dir with an alternate: a partial file there is the basis, not the alternate's differing
# file (generator.c recv_generator prepare_to_open: partialptr replaces the try_dests_reg basis)
_PARTIAL_CLIENT = {"src": Dir({"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900)}, mode=0o755, mtime=T0)}
for _kind in ("link", "copy", "compare"):
    scenario(f"partial-dir-over-{_kind}-dest", write("mod/s2/.part/big.bin", BIG2[:90000], mtime=T0 + 5),
             push("-ai", "--partial-dir=.part", f"--{_kind}-dest=../s1", "--stats", dest="s2/", delta=True),
             client=_PARTIAL_CLIENT,
             seed={"s1": Dir({"big.bin": File(BIG[40000:] + BIG[:40000], mode=0o644, mtime=T0)}, mtime=T0)})
scenario("partial-dir-alt-dest-matches", write("mod/s2/.part/big.bin", BIG2[:90000], mtime=T0 + 5),
         push("-ai", "--partial-dir=.part", "--link-dest=../s1", dest="s2/"), client=_PARTIAL_CLIENT,
         seed={"s1": Dir({"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900)}, mtime=T0)})
scenario("partial-dir-link-dest-existing", write("mod/s2/.part/big.bin", BIG2[:90000], mtime=T0 + 5),
         push("-ai", "--partial-dir=.part", "--link-dest=../s1", "--stats", dest="s2/", delta=True),
         client=_PARTIAL_CLIENT,
         seed={"s1": Dir({"big.bin": File(BIG[40000:] + BIG[:40000], mode=0o644, mtime=T0)}, mtime=T0),
               "s2": Dir({"big.bin": File(BIG[:20000], mode=0o600, mtime=T0 + 1)}, mtime=T0)})
