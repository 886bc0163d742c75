"""The scenario catalogue: everyday rsync commands a migrating user runs, from the man pages.

The client's tree is ``client/`` (cwd of every command; pushes send
``src/``, pulls land in ``dst/``); the module is ``mod`` (seeded per
scenario). No expectation is written here: stock rsyncd's behaviour is the
oracle the harness compares backupd with.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from tests.delta_data import MANY, MANY2, REP_BASIS, REP_NEW
from tests.differential.harness import (
    PASSWORD,
    T0,
    USER,
    Busy,
    Change,
    OwnNames,
    Parallel,
    Scenario,
    Slow,
    rsync,
)
from tests.helpers import Dir, File, Symlink

SCENARIOS: list[Scenario] = []


def scenario(name: str, *steps, **kw) -> None:
    SCENARIOS.append(Scenario(name, tuple(steps), **kw))


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


BIG = blob(1, 96 * 1024)  # for delta transfers: big enough to have many blocks
BIG2 = BIG[:40000] + b"inserted in the middle\n" + BIG[40000:90000]  # changed copy


def src_tree(**extra) -> dict:
    """The client's usual tree under ``src``: files, a nested dir, a symlink."""
    entries = {
        "a.txt": File(b"alpha\n", mode=0o644, mtime=T0),
        "b.txt": File(b"bravo bravo\n", mode=0o600, mtime=T0 + 1),
        "x.log": File(b"log line\n", mode=0o644, mtime=T0 + 2),
        "sub": Dir(
            {
                "c.txt": File(b"charlie\n", mode=0o644, mtime=T0 + 3),
                "deep": Dir({"d.txt": File(b"delta\n", mode=0o640, mtime=T0 + 4)},
                            mode=0o750, mtime=T0 + 5),
            },
            mode=0o755,
            mtime=T0 + 6,
        ),
        "link": Symlink("a.txt", mtime=T0 + 7),
        **extra,
    }
    return {"src": Dir(entries, mode=0o755, mtime=T0 + 8)}


def mod_tree(**extra) -> dict:
    """A module already holding a backup: some same, some changed, some extraneous files."""
    return {
        "a.txt": File(b"alpha\n", mode=0o644, mtime=T0),
        "b.txt": File(b"old bravo\n", mode=0o644, mtime=T0 - 100),
        "extra.txt": File(b"extraneous\n", mode=0o644, mtime=T0),
        "extra.log": File(b"extraneous log\n", mode=0o644, mtime=T0),
        "zdir": Dir({"z1": File(b"z1\n", mtime=T0), "zz": Dir({"z2": File(b"z2\n", mtime=T0)},
                                                           mode=0o755, mtime=T0)},
                    mode=0o755, mtime=T0),
        "sub": Dir({"c.txt": File(b"charlie\n", mode=0o644, mtime=T0 + 3),
                    "stale": File(b"stale\n", mode=0o644, mtime=T0)}, mode=0o755, mtime=T0),
        **extra,
    }


def pulled_tree(**extra) -> dict:
    """What a module holds for pull scenarios (the src tree's entries at the module root)."""
    return src_tree(**extra)["src"].entries


def push(*opts: str, dest: str = "", src: str = "src/", **kw):
    return rsync(*opts, src, "{mod}/" + dest, **kw)


def pull(*opts: str, path: str = "", dest: str = "dst/", **kw):
    return rsync(*opts, "{mod}/" + path, dest, **kw)


# ---------------------------------------------------------------- tree changes


def _at(base: Path, rel: str) -> Path:
    return base / rel


def chown_tree(rel: str, ident: int):
    """A change: everything under ``rel`` (itself too) owned by uid and gid ``ident``, symlinks themselves."""
    def change(base: Path) -> None:
        top = _at(base, rel)
        for path in [top, *top.rglob("*")]:
            os.lchown(path, ident, ident)
    return change


def write(rel: str, data: bytes, mtime: int = T0 + 500, mode: int | None = None) -> Change:
    def fn(base: Path) -> None:
        path = _at(base, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        path.write_bytes(data)
        if mode is not None:
            os.chmod(path, mode)
        os.utime(path, (mtime, mtime))

    return Change(fn, f"write {rel}")


def remove(rel: str) -> Change:
    def fn(base: Path) -> None:
        import shutil

        path = _at(base, rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    return Change(fn, f"remove {rel}")


def hardlink(existing: str, new: str) -> Change:
    return Change(lambda base: os.link(_at(base, existing), _at(base, new)), f"link {new}")


def symlink(rel: str, target: str) -> Change:
    return Change(lambda base: os.symlink(target, _at(base, rel)), f"symlink {rel}")


def mkfifo(rel: str) -> Change:
    return Change(lambda base: os.mkfifo(_at(base, rel)), f"mkfifo {rel}")


def touch_dir(rel: str, mtime: int) -> Change:
    return Change(lambda base: os.utime(_at(base, rel), (mtime, mtime)), f"mtime {rel}")


def sparse(rel: str) -> Change:
    def fn(base: Path) -> None:
        path = _at(base, rel)
        with open(path, "wb") as f:
            f.write(b"head")
            f.seek(300_000)
            f.write(b"middle")
            f.seek(700_000)
            f.write(b"tail")
        os.utime(path, (T0, T0))

    return Change(fn, f"sparse {rel}")


def write_list(rel: str, names: list[str], sep: str = "\n") -> Change:
    return write(rel, (sep.join(names) + sep).encode(), mtime=T0)


# ---------------------------------------------------------------- basics (push)

scenario("push-a", push("-ai"), client=src_tree())
scenario("push-a-twice", push("-ai"), push("-ai"), client=src_tree())
scenario(
    "push-a-changed",
    push("-ai"),
    write("client/src/a.txt", b"ALPHA\n"),
    write("client/src/new.txt", b"new\n"),
    push("-ai"),
    client=src_tree(),
)
scenario("push-into-seeded", push("-ai"), client=src_tree(), seed=mod_tree())
scenario("push-new-dest-dir", push("-ai", dest="newdir/"), client=src_tree())
scenario("push-new-dest-dir-nested", push("-ai", dest="n1/n2/n3/"), client=src_tree())
scenario("push-mkpath", push("-ai", "--mkpath", dest="p1/p2/p3/"), client=src_tree())
scenario("push-mkpath-file", push("-ai", "--mkpath", dest="q1/q2/renamed.txt",
                                  src="src/a.txt"), client=src_tree())
scenario("push-no-trailing-slash", push("-ai", src="src"), client=src_tree())
scenario("push-single-file", push("-ai", src="src/a.txt"), client=src_tree())
scenario("push-single-file-renamed", push("-ai", src="src/a.txt", dest="renamed.txt"),
         client=src_tree())
scenario("push-into-subdir", push("-ai", dest="sub/"), client=src_tree(), seed=mod_tree())
scenario("push-r-only", push("-ri"), client=src_tree())
scenario("push-rt", push("-rti"), client=src_tree())
scenario("push-rlpt", push("-rlpti"), client=src_tree())
scenario("push-rl-no-times-again", push("-rli"), push("-rli"), client=src_tree())
scenario("push-verbose", push("-av"), client=src_tree())
scenario("push-stats", push("-ai", "--stats"), client=src_tree())
scenario("push-chmod", push("-ai", "--chmod=F600,D700"), client=src_tree())
scenario("push-without-l", push("-rti"), client=src_tree(), seed=mod_tree())
scenario("push-ignore-times", push("-ai"), push("-ai", "-I"), client=src_tree())
scenario("push-numeric-ids", push("-ai", "--numeric-ids"), client=src_tree())
# --chown is sent as --usermap=*:USER --groupmap=*:GROUP; the receiver maps (uidlist.c parse_name_map)
scenario("push-chown", push("-ai", "--chown=nobody:nogroup"), client=src_tree(), seed=mod_tree())
scenario("push-chown-user-only", push("-ai", "--chown=daemon"), client=src_tree())
scenario("push-chown-group-only", push("-ai", "--chown=:nogroup"), client=src_tree())
scenario("push-usermap-rules", push("-ai", "--usermap=0-10:daemon,*:nobody", "--groupmap=daemon:nogroup,*:daemon"),
         client=src_tree())
# a name rule for id 0: a module's `numeric ids` (the daemon default) drops the sender's names, so
# only '*' matches there; with `numeric ids = no` the id lists' names count (CF_ID0_NAMES sends root's)
scenario("push-usermap-root-name", push("-ai", "--no-inc-recursive", "--groupmap=root:nogroup,*:daemon"),
         client=src_tree())
scenario("push-usermap-names", push("-ai", "--no-inc-recursive", "--groupmap=root:nogroup,*:daemon"),
         client=src_tree(), params={"numeric ids": "no"})
scenario("push-usermap-numeric-ids", push("-ai", "--numeric-ids", "--usermap=0:65534", "--groupmap=0:1"),
         client=src_tree())
# a client whose accounts differ from the server's: uid/gid 4242 is "daemon" there (1 on the server).
# A module's `numeric ids` drops the names, the ids stay as sent (uidlist.c recv_user_name with
# numeric_ids < 0); with `numeric ids = no` the server maps the names to its own ids
CLIENT_DAEMON = {4242: "daemon"}
for _how in ((), ("--no-inc-recursive",)):
    _tag = "-no-inc" if _how else ""
    scenario(f"push-client-names-numeric-module{_tag}", Change(chown_tree("client/src", 4242), "chown 4242"),
             OwnNames(push("-ai", *_how), CLIENT_DAEMON), client=src_tree())
    scenario(f"push-client-names-mapped{_tag}", Change(chown_tree("client/src", 4242), "chown 4242"),
             OwnNames(push("-ai", *_how), CLIENT_DAEMON), client=src_tree(), params={"numeric ids": "no"})
# `numeric ids` unset follows `use chroot` (clientserver.c): without chroot, as here, names are mapped
scenario("push-client-names-numeric-unset", Change(chown_tree("client/src", 4242), "chown 4242"),
         OwnNames(push("-ai"), CLIENT_DAEMON), client=src_tree(), params={"numeric ids": "unset"})
scenario("push-usermap-unknown-name", push("-ai", "--usermap=*:no-such-user-here"), client=src_tree())
scenario("push-usermap-no-colon", push("-ai", "--usermap=nobody"), client=src_tree())
scenario("push-usermap-bad-number", push("-ai", "--usermap=1x:nobody"), client=src_tree())
scenario("push-groupmap-no-target", push("-ai", "--groupmap=*:"), client=src_tree())
scenario("push-chown-twice", push("-ai", "--chown=daemon", "--usermap=*:nobody"), client=src_tree())
scenario("push-dirs-only", push("-dti"), client=src_tree())
scenario("push-recursive-no-inc-nonreg", push("-rti", "--no-inc-recursive"), client=src_tree())
scenario("push-dirs-only-delete", push("-dti", "--delete"), client=src_tree(), seed=mod_tree())
scenario("push-omit-dir-times", push("-aiO"), client=src_tree(), seed=mod_tree())
scenario("push-executability", push("-rtEi"), write("client/src/a.txt", b"x", mode=0o755),
         push("-rtEi"), client=src_tree(), seed=mod_tree())
scenario("push-executability-modes", push("-rtEi"), client=src_tree(
         **{"x-only.sh": File(b"#!/bin/sh\n", mode=0o744, mtime=T0), "same.sh": File(b"same\n", mode=0o750, mtime=T0),
            "drop-x": File(b"dx\n", mode=0o644, mtime=T0)}),
         seed={"same.sh": File(b"same\n", mode=0o604, mtime=T0), "drop-x": File(b"dx\n", mode=0o775, mtime=T0)})
scenario("push-prune-empty-dirs", push("-aim"),
         client=src_tree(empty=Dir({"e2": Dir({}, mtime=T0)}, mtime=T0)))
scenario("push-prune-excluded", push("-aim", "--exclude=*.txt"), client=src_tree())
scenario("push-min-max-size", push("-ai", "--max-size=7", "--min-size=2"), client=src_tree())
scenario("push-out-format", push("-a", "--out-format=%i %n%L|%o|%l"), client=src_tree())
scenario("push-timeout", push("-ai", "--timeout=30"), client=src_tree())
scenario("push-remove-source-files", push("-ai", "--remove-source-files"), client=src_tree())
# unchanged files and a link already in place are confirmed too (generator.c return_with_success)
scenario("push-remove-source-files-unchanged", push("-ai", "--remove-source-files"), client=src_tree(),
         seed=mod_tree(link=Symlink("a.txt", mtime=T0 + 7)))
scenario("push-remove-source-files-dry-run", push("-ain", "--remove-source-files"), client=src_tree(),
         seed=mod_tree())
scenario("push-delay-updates", push("-ai", "--delay-updates"), client=src_tree(), seed=mod_tree())
# rsync same_time(): the default window compares whole seconds, -@-1 nanoseconds too
NS_CLIENT = {"src": Dir({"n.txt": File(b"same size\n", mtime_ns=T0 * 10**9 + 700_000_000),
                        "d": Dir({}, mtime_ns=T0 * 10**9 + 300_000_000)}, mode=0o755, mtime=T0)}
NS_SEED = {"n.txt": File(b"SAME SIZE\n", mtime_ns=T0 * 10**9 + 100_000_000),
           "d": Dir({}, mtime_ns=T0 * 10**9 + 900_000_000)}
scenario("mtime-subsecond-default", push("-ai"), client=NS_CLIENT, seed=NS_SEED)
scenario("mtime-subsecond-window-neg", push("-ai", "--modify-window=-1"), client=NS_CLIENT,
         seed=NS_SEED)
scenario("push-temp-dir", push("-ai", "--temp-dir=/tmp"), client=src_tree(), seed=mod_tree())
scenario("push-temp-dir-in-module", push("-ai", "--temp-dir=/tdir"), client=src_tree(),
         seed=mod_tree(tdir=Dir({}, mode=0o755, mtime=T0)))
scenario("push-temp-dir-relative", push("-ai", "--temp-dir=tdir", dest="sub/"), client=src_tree(),
         seed=mod_tree(sub=Dir({"tdir": Dir({}, mode=0o755, mtime=T0)}, mode=0o755, mtime=T0)))
scenario("push-temp-dir-not-dir", push("-ai", "--temp-dir=/a.txt"), client=src_tree(), seed=mod_tree())
scenario("push-preallocate", push("-ai", "--preallocate"), client=src_tree())
scenario("push-ignore-missing-args",
         rsync("-ai", "--ignore-missing-args", "src/a.txt", "src/none", "{mod}/"),
         client=src_tree())
scenario("push-missing-arg", rsync("-ai", "src/a.txt", "src/none", "{mod}/"), client=src_tree())
scenario("push-devices-fifo", mkfifo("client/src/fifo"), push("-ai"), client=src_tree())
scenario("push-fifo-without-D", mkfifo("client/src/fifo"), push("-rlti"), client=src_tree())
scenario("push-dotdot-dest", push("-ai", dest="../outside/"), client=src_tree())
scenario("push-empty-source", push("-ai"), client={"src": Dir({}, mode=0o755, mtime=T0)},
         seed=mod_tree())

# ---------------------------------------------------------------- dry run

scenario("dry-run", push("-ain"), client=src_tree(), seed=mod_tree())
scenario("dry-run-delete", push("-ain", "--delete"), client=src_tree(), seed=mod_tree())
scenario("dry-run-new-dest", push("-ain", dest="nd/"), client=src_tree())
scenario("dry-run-stats", push("-ain", "--stats"), client=src_tree(), seed=mod_tree())

# ---------------------------------------------------------------- delete modes

for mode in ("--delete", "--delete-before", "--delete-during", "--delete-delay",
             "--delete-after"):
    scenario(f"delete{mode.removeprefix('--delete')}", push("-ai", mode),
             client=src_tree(), seed=mod_tree())
scenario("delete-excluded", push("-ai", "--delete-excluded", "--exclude=*.log"),
         client=src_tree(), seed=mod_tree())
scenario("delete-keeps-excluded", push("-ai", "--delete", "--exclude=*.log"),
         client=src_tree(), seed=mod_tree())
scenario("delete-protect-filter", push("-ai", "--delete", "--filter=P extra*"),
         client=src_tree(), seed=mod_tree())
scenario("max-delete-1", push("-ai", "--delete", "--max-delete=1"), client=src_tree(),
         seed=mod_tree())
scenario("max-delete-2", push("-ai", "--delete", "--max-delete=2"), client=src_tree(),
         seed=mod_tree())
scenario("max-delete-0", push("-ai", "--delete", "--max-delete=0"), client=src_tree(),
         seed=mod_tree())
scenario("delete-subdir", push("-ai", "--delete", src="src/sub/", dest="sub/"),
         client=src_tree(), seed=mod_tree())
scenario("delete-ignore-errors", push("-ai", "--delete", "--ignore-errors"),
         client=src_tree(), seed=mod_tree())
scenario("delete-missing-args",
         write_list("client/list", ["a.txt", "gone.txt"]),
         push("-ai", "--files-from=list", "--delete-missing-args"),
         client=src_tree(), seed=mod_tree(**{"gone.txt": File(b"g\n", mtime=T0)}))
scenario("delete-missing-args-full-dir",  # a non-empty dir named: only --force removes it (delete_item)
         write_list("client/list", ["a.txt", "zdir"]),
         push("-ai", "--files-from=list", "--delete-missing-args"),
         push("-ai", "--files-from=list", "--delete-missing-args", "--force"),
         client=src_tree(), seed=mod_tree())
scenario("delete-missing-args-full-dir-r",  # with -r as the pusher's batches run it
         write_list("client/list", ["a.txt", "zdir"]),
         push("-ai", "-r", "--files-from=list", "--delete-missing-args"),
         client=src_tree(), seed=mod_tree())
scenario("delete-dry-run-after", push("-ain", "--delete-after"), client=src_tree(),
         seed=mod_tree())
scenario("delete-twice", push("-ai", "--delete"), remove("client/src/sub"),
         push("-ai", "--delete"), client=src_tree())

# ---------------------------------------------------------------- type changes

scenario("type-file-to-dir", push("-ai"), client=src_tree(**{"extra.txt": Dir(
    {"inside": File(b"in\n", mtime=T0)}, mode=0o755, mtime=T0)}), seed=mod_tree())
scenario("type-dir-to-file", push("-ai"), client=src_tree(zdir=File(b"now a file\n", mtime=T0)),
         seed=mod_tree())
scenario("type-dir-to-file-delete", push("-ai", "--delete"),
         client=src_tree(zdir=File(b"now a file\n", mtime=T0)), seed=mod_tree())
scenario("type-dir-to-file-force", push("-ai", "--delete", "--force"),
         client=src_tree(zdir=File(b"now a file\n", mtime=T0)), seed=mod_tree())
scenario("type-file-to-symlink", push("-ai"), client=src_tree(**{"b.txt": Symlink("a.txt")}),
         seed=mod_tree())
scenario("type-symlink-to-file", push("-ai"), remove("client/src/link"),
         write("client/src/link", b"regular now\n", mtime=T0), push("-ai"), client=src_tree())
scenario("type-symlink-to-dir", push("-ai"), remove("client/src/link"),
         Change(lambda b: (b / "client/src/link").mkdir(), "mkdir link"), push("-ai"),
         client=src_tree())
scenario("type-dir-to-symlink", push("-ai", "--force"),
         client=src_tree(zdir=Symlink("sub")), seed=mod_tree())
scenario("symlink-retarget", push("-ai"), remove("client/src/link"),
         symlink("client/src/link", "b.txt"), push("-ai"), client=src_tree())

# ---------------------------------------------------------------- filters

scenario("exclude-glob", push("-ai", "--exclude=*.log"), client=src_tree())
scenario("include-dirs-txt-only",
         push("-ai", "--include=*/", "--include=*.txt", "--exclude=*"), client=src_tree())
scenario("exclude-dir", push("-ai", "--exclude=sub/"), client=src_tree())
scenario("exclude-anchored", push("-ai", "--exclude=/a.txt", "--exclude=/sub/c.txt"),
         client=src_tree(**{"sub2": Dir({"a.txt": File(b"a2\n", mtime=T0)}, mtime=T0)}))
scenario("exclude-double-star", push("-ai", "--exclude=**/deep/**"), client=src_tree())
scenario("exclude-from", write_list("client/ex.lst", ["*.log", "deep/"]),
         push("-ai", "--exclude-from=ex.lst"), client=src_tree())
scenario("include-from", write_list("client/in.lst", ["*/", "c.txt"]),
         push("-ai", "--include-from=in.lst", "--exclude=*"), client=src_tree())
scenario("filter-merge", write_list("client/rules", ["- *.log", "+ sub/", "- b.txt"]),
         push("-ai", "--filter=merge rules"), client=src_tree())
scenario("filter-F", push("-aiF"), client=src_tree(**{
    ".rsync-filter": File(b"- *.log\n", mtime=T0),
    "sub": Dir({".rsync-filter": File(b"- c.txt\n", mtime=T0),
                "c.txt": File(b"c\n", mtime=T0), "e.txt": File(b"e\n", mtime=T0)}, mtime=T0)}))
scenario("filter-FF", push("-aiFF"), client=src_tree(**{
    ".rsync-filter": File(b"- *.log\n", mtime=T0)}))
scenario("filter-dir-merge", push("-ai", "--filter=dir-merge .excl"), client=src_tree(**{
    "sub": Dir({".excl": File(b"- deep/\n", mtime=T0), "c.txt": File(b"c\n", mtime=T0),
                "deep": Dir({"d": File(b"d\n", mtime=T0)}, mtime=T0)}, mtime=T0)}))
scenario("filter-dir-merge-delete", push("-ai", "--delete", "--filter=dir-merge .excl"),
         client=src_tree(**{".excl": File(b"- extra*\n", mtime=T0)}), seed=mod_tree())
scenario("filter-hide", push("-ai", "--filter=H *.log"), client=src_tree())
scenario("filter-cvs-exclude", push("-aiC"), client=src_tree(**{
    "x.o": File(b"obj\n", mtime=T0), "core": File(b"core\n", mtime=T0),
    "CVS": Dir({"Entries": File(b"e\n", mtime=T0)}, mtime=T0)}))
scenario("filter-clear", push("-ai", "--exclude=*.txt", "--filter=!", "--exclude=*.log"),
         client=src_tree())

# ---------------------------------------------------------------- relative paths

scenario("relative-file", rsync("-aiR", "src/sub/c.txt", "{mod}/"), client=src_tree())
scenario("relative-dot", rsync("-aiR", "src/./sub", "{mod}/"), client=src_tree())
scenario("relative-no-implied-dirs",
         rsync("-aiR", "--no-implied-dirs", "src/sub/deep/d.txt", "{mod}/"), client=src_tree())
scenario("relative-no-implied-existing",
         rsync("-aiR", "--no-implied-dirs", "src/sub/c.txt", "{mod}/"), client=src_tree(),
         seed={"src": Dir({"sub": Dir({}, mode=0o700, mtime=T0)}, mode=0o711, mtime=T0)})
scenario("relative-no-implied-dir-arg",
         rsync("-aiR", "--no-implied-dirs", "src/sub/deep", "src/./b.txt", "{mod}/base/"), client=src_tree(),
         seed={"base": Dir({"src": Dir({}, mode=0o700, mtime=T0)}, mode=0o755, mtime=T0)})
scenario("relative-several", rsync("-aiR", "src/sub", "src/b.txt", "{mod}/base/"),
         client=src_tree())
scenario("relative-delete", rsync("-aiR", "--delete", "src/./sub", "{mod}/"),
         client=src_tree(), seed=mod_tree())

# ---------------------------------------------------------------- files-from

scenario("files-from", write_list("client/list", ["a.txt", "sub/c.txt"]),
         push("-ai", "--files-from=list"), client=src_tree())
scenario("files-from-dir-no-r", write_list("client/list", ["sub"]),
         push("-ai", "--files-from=list"), client=src_tree())
scenario("files-from-dir-r", write_list("client/list", ["sub"]),
         push("-ai", "-r", "--files-from=list"), client=src_tree())
scenario("files-from-0", write_list("client/list", ["a.txt", "b.txt"], sep="\0"),
         push("-ai", "--from0", "--files-from=list"), client=src_tree())
scenario("files-from-no-relative", write_list("client/list", ["sub/c.txt"]),
         push("-ai", "--no-relative", "--files-from=list"), client=src_tree())
scenario("files-from-pull", write_list("client/list", ["a.txt", "sub/deep/d.txt"]),
         pull("-ai", "--files-from=list"), seed=pulled_tree())
scenario("files-from-pull-remote",
         pull("-ai", "--files-from=:list"),
         seed=pulled_tree(list=File(b"a.txt\nsub/c.txt\n", mtime=T0)))
scenario("files-from-pull-remote-comments", pull("-ai", "--files-from=:/lists/l"),
         seed=pulled_tree(lists=Dir({"l": File(b"# a comment\n; another\n\nb.txt\r\nsub/deep\n", mtime=T0)},
                                    mtime=T0)))
scenario("files-from-pull-remote-from0", pull("-ai", "--from0", "--files-from=:l0"),
         seed=pulled_tree(l0=File(b"a.txt\0#not-a-comment\0x.log\0", mtime=T0)))
scenario("files-from-pull-remote-missing", pull("-ai", "--files-from=:nolist"), seed=pulled_tree())
scenario("files-from-pull-remote-dotdot", pull("-ai", "--files-from=:../../list"),
         seed=pulled_tree(list=File(b"a.txt\n", mtime=T0)))
scenario("files-from-pull-remote-excluded", pull("-ai", "--files-from=:x.log"), seed=pulled_tree(),
         params={"exclude": "*.log"})

# ---------------------------------------------------------------- delta, compression, checksums

DELTA_CLIENT = {"src": Dir({"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900),
                            "a.txt": File(b"alpha\n", mtime=T0)}, mode=0o755, mtime=T0)}
DELTA_SEED = {"big.bin": File(BIG[:90000], mode=0o644, mtime=T0)}

scenario("delta-plain", push("-ai", "--stats", delta=True), client=DELTA_CLIENT,
         seed=DELTA_SEED)
scenario("delta-block-size", push("-ai", "--stats", "--block-size=1024", delta=True),
         client=DELTA_CLIENT, seed=DELTA_SEED)
scenario("whole-file", push("-aiW", "--stats"), client=DELTA_CLIENT, seed=DELTA_SEED)
for choice in ("zstd", "lz4", "zlibx", "zlib", "none"):
    scenario(f"compress-{choice}", push("-ai", "-z", f"--compress-choice={choice}", "--stats",
                                        delta=True), client=DELTA_CLIENT, seed=DELTA_SEED)
scenario("compress-z", push("-aiz", "--stats", delta=True), client=DELTA_CLIENT,
         seed=DELTA_SEED)
scenario("compress-level", push("-aiz", "--compress-level=9", "--stats", delta=True),
         client=DELTA_CLIENT, seed=DELTA_SEED)
scenario("compress-skip-compress", push("-aiz", "--skip-compress=bin", "--stats", delta=True),
         client=DELTA_CLIENT, seed=DELTA_SEED)
for choice in ("xxh128", "xxh3", "xxh64", "md5", "md4"):
    scenario(f"checksum-choice-{choice}",
             push("-ai", f"--checksum-choice={choice}", "--stats", delta=True),
             client=DELTA_CLIENT, seed=DELTA_SEED)
    scenario(f"checksum-c-{choice}", push("-aic", f"--checksum-choice={choice}"),
             client=src_tree(), seed=mod_tree(**{"a.txt": File(b"ALPHA\n", mtime=T0)}))
scenario("checksum-c", push("-aic"), client=src_tree(),
         seed=mod_tree(**{"a.txt": File(b"ALPHA\n", mtime=T0)}))
scenario("quick-check-misses", push("-ai"), client=src_tree(),
         seed=mod_tree(**{"a.txt": File(b"ALPHA\n", mtime=T0)}))
scenario("size-only", push("-ai", "--size-only"), client=src_tree(), seed=mod_tree())
scenario("ignore-existing", push("-ai", "--ignore-existing"), client=src_tree(),
         seed=mod_tree())
scenario("existing", push("-ai", "--existing"), client=src_tree(), seed=mod_tree())
scenario("existing-new-dest", push("-ai", "--existing", dest="nd/"), client=src_tree())
scenario("update", push("-aiu"), client=src_tree(),
         seed=mod_tree(**{"a.txt": File(b"newer on server\n", mtime=T0 + 9999)}))
scenario("fuzzy", push("-ai", "--fuzzy", "--stats", delta=True),
         client={"src": Dir({"big-v2.bin": File(BIG2, mtime=T0)}, mode=0o755, mtime=T0)},
         seed={"big-v1.bin": File(BIG, mtime=T0)})
scenario("fuzzy-nearest-name", push("-ai", "--fuzzy", "--stats", delta=True),
         client={"src": Dir({"data-v3.bin": File(BIG2, mtime=T0 + 900)}, mode=0o755, mtime=T0)},
         seed={"data-v2.bin": File(BIG, mtime=T0), "dat.bin": File(blob(7, 90000), mtime=T0),
               "zeta-v3.txt": File(blob(8, 90000), mtime=T0), "empty-v3.bin": File(b"", mtime=T0),
               "data-v3.bin.d": Dir({}, mtime=T0)})
scenario("fuzzy-size-mtime-first", push("-ai", "--fuzzy", "--stats", delta=True),
         client={"src": Dir({"new.bin": File(BIG2, mtime=T0 + 900), "new.bim": File(BIG, mtime=T0 + 9)},
                            mode=0o755, mtime=T0)},
         seed={"zz-far-away.dat": File(BIG2, mtime=T0 + 900), "new.bin.old": File(blob(9, 90000), mtime=T0)})
scenario("fuzzy-no-perms", push("-rti", "--fuzzy", "--stats", delta=True),
         client={"src": Dir({"big-v2.bin": File(BIG2, mode=0o644, mtime=T0)}, mode=0o755, mtime=T0)},
         seed={"big-v1.bin": File(BIG, mode=0o600, mtime=T0)})
scenario("partial-dir-resume-no-perms",
         write("mod/.p/big.bin", BIG2[:50000], mtime=T0 + 5, mode=0o604),
         push("-rti", "--partial-dir=.p", "--stats", delta=True), client=DELTA_CLIENT)
scenario("compare-dest-basis-no-perms", push("-rti", "--compare-dest=../s1", "--stats", dest="s2/", delta=True),
         client={"src": Dir({"big.bin": File(BIG2, mode=0o644, mtime=T0 + 900)}, mode=0o755, mtime=T0)},
         seed={"s1": Dir({"big.bin": File(BIG, mode=0o600, mtime=T0)}, mtime=T0), "s2": Dir({}, mtime=T0)})
scenario("fuzzy-subdir-updated", push("-ai", "--fuzzy", "--stats", delta=True),
         client={"src": Dir({"d": Dir({"a-v1.bin": File(BIG2, mtime=T0 + 900),
                                       "a-v2.bin": File(BIG2, mtime=T0 + 901)}, mtime=T0)},
                            mode=0o755, mtime=T0)},
         seed={"d": Dir({"a-v1.bin": File(BIG, mtime=T0)}, mtime=T0)})

# ---------------------------------------------------------------- inplace, partial, append

scenario("inplace", push("-ai", "--inplace", "--stats", delta=True), client=DELTA_CLIENT,
         seed=DELTA_SEED)
scenario("inplace-shrink", push("-ai", "--inplace", "--stats", delta=True),
         client={"src": Dir({"big.bin": File(BIG[:50000], mode=0o644, mtime=T0 + 900)}, mode=0o755, mtime=T0)},
         seed=DELTA_SEED)
scenario("inplace-new-and-changed", push("-ai", "--inplace"), client=src_tree(), seed=mod_tree())
scenario("inplace-hardlinked", hardlink("mod/big.bin", "mod/other-name"),
         push("-ai", "--inplace"), client=DELTA_CLIENT, seed=DELTA_SEED)
scenario("partial", push("-ai", "--partial"), client=src_tree(), seed=mod_tree())
scenario("partial-resume", push("-ai", "--partial", "--stats", delta=True),
         client=DELTA_CLIENT, seed={"big.bin": File(BIG2[:30000], mode=0o600, mtime=T0 + 1)})
scenario("partial-dir-resume",
         write("mod/src-partial/big.bin", BIG2[:50000], mtime=T0 + 5),
         push("-ai", "--partial-dir=src-partial", "--stats", delta=True),
         client=DELTA_CLIENT)
scenario("partial-dir-dot", push("-ai", "--partial-dir=.rsync-partial"), client=src_tree())
scenario("partial-dir-resume-existing",
         write("mod/.part/big.bin", BIG2[:60000], mtime=T0 + 5),
         write("mod/.part/other", b"someone else's partial\n", mtime=T0 + 5),
         push("-ai", "--partial-dir=.part", "--stats", delta=True),
         client=DELTA_CLIENT, seed=DELTA_SEED)
scenario("partial-dir-up-to-date",
         write("mod/sub/.part/c.txt", b"stale partial\n", mtime=T0 + 5),
         push("-ai", "--partial-dir=.part"), client=src_tree(),
         seed={"sub": Dir({"c.txt": File(b"charlie\n", mode=0o644, mtime=T0 + 3)}, mode=0o755, mtime=T0)})
scenario("partial-dir-resume-subdir",
         write("mod/d/pd/big.bin", BIG2[:50000], mtime=T0 + 5),
         push("-ai", "--partial-dir=pd", "--stats", dest="d/", delta=True),
         client=DELTA_CLIENT)
scenario("append-resume", push("-ai", "--append", "--stats", delta=True),
         client=DELTA_CLIENT, seed={"big.bin": File(BIG2[:50000], mtime=T0)})
scenario("append-verify-good", push("-ai", "--append-verify", "--stats", delta=True),
         client=DELTA_CLIENT, seed={"big.bin": File(BIG2[:50000], mtime=T0)})
scenario("append-verify-bad", push("-ai", "--append-verify"),
         client=DELTA_CLIENT, seed={"big.bin": File(b"X" * 50000, mtime=T0)})
scenario("append-verify-bad-verbose", push("-av", "--no-inc-recursive", "--append-verify", "--stats", delta=True),
         client=DELTA_CLIENT, seed={"big.bin": File(BIG2[:20000] + b"X" * 30000, mtime=T0)})
scenario("append-bad-prefix-quiet", push("-a", "--append-verify"),
         client=DELTA_CLIENT, seed={"big.bin": File(b"Y" * 40000, mode=0o600, mtime=T0)})
scenario("append-verify-new-file", push("-ai", "--append-verify", "--stats", delta=True),
         client=src_tree())
scenario("append-longer-dest", push("-ai", "--append"), client=src_tree(),
         seed={"a.txt": File(b"alpha\nand much more than that\n", mtime=T0)})
scenario("append-twice", push("-ai", "--append-verify"), write("client/src/a.txt",
         b"alpha\nmore\n", mtime=T0 + 600), push("-ai", "--append-verify"), client=src_tree())

# ---------------------------------------------------------------- sparse, links

scenario("sparse", sparse("client/src/holes"), push("-aiS"), client=src_tree())
scenario("sparse-inplace", sparse("client/src/holes"), push("-aiS", "--inplace"),
         client=src_tree())
scenario("hardlinks", hardlink("client/src/a.txt", "client/src/a-link"),
         hardlink("client/src/a.txt", "client/src/sub/a-link2"), push("-aiH"), client=src_tree())
scenario("hardlinks-added-later", push("-aiH"),
         hardlink("client/src/b.txt", "client/src/b-link"), push("-aiH"), client=src_tree())
scenario("hardlinks-without-H", hardlink("client/src/a.txt", "client/src/a-link"),
         push("-ai"), client=src_tree())
scenario("hardlinks-H-delete", hardlink("client/src/a.txt", "client/src/a-link"),
         push("-aiH", "--delete"), client=src_tree(), seed=mod_tree())
scenario("hardlinks-H-delete-no-inc", hardlink("client/src/a.txt", "client/src/a-link"),
         push("-aiH", "--delete", "--no-inc-recursive"), client=src_tree(), seed=mod_tree())
scenario("keep-dirlinks", push("-aiK"), client=src_tree(),
         seed={"sub": Symlink("realsub"), "realsub": Dir({}, mode=0o755, mtime=T0)})
scenario("keep-dirlinks-delete", push("-aiK", "--delete"), push("-aiK", "--delete"), client=src_tree(),
         seed={"sub": Symlink("realsub"),
               "realsub": Dir({"stale": File(b"old\n", mtime=T0), "c.txt": File(b"old c\n", mtime=T0)},
                              mode=0o700, mtime=T0)})
scenario("keep-dirlinks-dangling", push("-aiK"), client=src_tree(), seed={"sub": Symlink("missing")})
scenario("no-keep-dirlinks", push("-ai"), client=src_tree(),
         seed={"sub": Symlink("realsub"), "realsub": Dir({}, mode=0o755, mtime=T0)})
UNSAFE = dict(abs=Symlink("/etc/passwd"), up=Symlink("../../outside"),
              inside=Symlink("sub/c.txt"), dotdot=Symlink("sub/../a.txt"))
scenario("safe-links-push", push("-ai", "--safe-links"), client=src_tree(**UNSAFE))
scenario("links-unsafe-push", push("-ai"), client=src_tree(**UNSAFE))
scenario("copy-links", push("-aiL"), client=src_tree())
scenario("copy-unsafe-links", push("-ai", "--copy-unsafe-links"),
         client=src_tree(outl=Symlink("../outside.txt")) | {
             "outside.txt": File(b"outside\n", mtime=T0)})
scenario("copy-dirlinks", push("-aik"), client=src_tree(dlink=Symlink("sub")))

# ---------------------------------------------------------------- odd names

ODD = {
    "with space.txt": File(b"s\n", mtime=T0),
    "new\nline": File(b"n\n", mtime=T0),
    "unicodé ☃.txt": File(b"u\n", mtime=T0),
    "-leading-dash": File(b"d\n", mtime=T0),
    "glob[a]*?.txt": File(b"g\n", mtime=T0),
    b"latin1-\xe9": File(b"l\n", mtime=T0),
    "back\\slash": File(b"b\n", mtime=T0),
}
for i, (name, node) in enumerate(ODD.items()):
    scenario(f"odd-name-{i}", push("-ai"), client={"src": Dir({name: node}, mode=0o755,
                                                           mtime=T0)})
scenario("odd-names-delete", push("-ai", "--delete"),
         client={"src": Dir({}, mode=0o755, mtime=T0)}, seed=dict(ODD))
scenario("odd-names-pull", pull("-ai"), seed=dict(ODD))
scenario("odd-names-list", rsync("--list-only", "{mod}/"), seed=dict(ODD))
scenario("odd-name-arg-dash", rsync("-ai", "--", "src/", "{mod}/-dash-dir/"),
         client=src_tree())

# ---------------------------------------------------------------- backups

scenario("backup", push("-ai", "--backup"), client=src_tree(), seed=mod_tree(),
         history_ignore=("*~",), history_loose=True)
scenario("backup-suffix", push("-ai", "--backup", "--suffix=.old"), client=src_tree(),
         seed=mod_tree(), history_ignore=("*.old",), history_loose=True)
scenario("backup-dir", push("-ai", "--backup", "--backup-dir=bak", "--delete"),
         client=src_tree(), seed=mod_tree(), history_ignore=("bak", "bak/*"), history_loose=True)
# with history on, emptied dirs go to history whole; rsyncd keeps them, holding the NAME~ backups
scenario("backup-delete", push("-ai", "--backup", "--delete"), client=src_tree(), seed=mod_tree(),
         history_ignore=("*~", "zdir", "zdir/*"), history_loose=True)
scenario("backup-twice", push("-ai", "--backup"), write("client/src/b.txt", b"third bravo\n"),
         push("-ai", "--backup"), client=src_tree(), seed=mod_tree(), history_ignore=("*~",),
         history_loose=True)
scenario("backup-dir-replaced", push("-ai", "--backup-dir=old", "--force"), client=src_tree(),
         seed=mod_tree(**{"x.log": Dir({"inner": File(b"inner\n", mtime=T0)}, mode=0o700, mtime=T0),
                          "link": File(b"was a file\n", mtime=T0)}),
         history_ignore=("old", "old/*"), history_loose=True)
scenario("backup-dir-subdest", push("-ai", "--backup-dir=../bak", dest="sub/"), client=src_tree(),
         seed=mod_tree(), history_ignore=("bak", "bak/*"), history_loose=True)
scenario("backup-dir-absolute", push("-ai", "-b", "--backup-dir=/keep/it", "--suffix=.v1", dest="sub/"),
         client=src_tree(), seed=mod_tree(), history_ignore=("keep", "keep/*"), history_loose=True)
scenario("backup-dir-not-a-dir", push("-ai", "--backup-dir=./bak/"), client=src_tree(),
         seed=mod_tree(bak=File(b"in the way\n", mtime=T0)), history_loose=True)
scenario("backup-inplace", push("-ai", "--backup", "--inplace"), client=src_tree(), seed=mod_tree(),
         history_ignore=("*~",), history_loose=True)
# -vv (info BACKUP) with "max verbosity = 2": the receiver says "backed up X to Y" for each kept version
# (backup.c keep_backup); without incremental recursion, which backupd declines ("building file list")
VV = {"max verbosity": 2}
scenario("backup-vv", push("-avv", "--no-inc-recursive", "--backup"), client=src_tree(), seed=mod_tree(),
         history_ignore=("*~",), history_loose=True, params=VV)
scenario("backup-dir-vv-delete", push("-avv", "--no-inc-recursive", "--backup-dir=bak", "--suffix=.old", "--delete"),
         client=src_tree(), seed=mod_tree(), history_ignore=("bak", "bak/*"), history_loose=True,
         params=VV)
scenario("backup-inplace-vv", push("-avv", "--no-inc-recursive", "--backup", "--inplace"), client=src_tree(),
         seed=mod_tree(), history_ignore=("*~",), history_loose=True, params=VV)
scenario("backup-dir-absolute-vv", push("-avv", "--no-inc-recursive", "-b", "--backup-dir=/keep/it", dest="sub/"),
         client=src_tree(), seed=mod_tree(), history_ignore=("keep", "keep/*"), history_loose=True, params=VV)
scenario("push-vv-max-verbosity", push("-avv", "--no-inc-recursive", "--delete"), client=src_tree(),
         seed=mod_tree(**{"a.txt": File(b"alpha\n", mode=0o600, mtime=T0)}), params=VV)
scenario("push-ivv-max-verbosity", push("-aivv", "--no-inc-recursive"), client=src_tree(), seed=mod_tree(),
         params=VV)
scenario("link-dest-ivv-default-max", push("-aivv", "--no-inc-recursive", "--link-dest=../prev", dest="cur/"),
         client=src_tree(), seed={"prev": Dir(pulled_tree(), mode=0o755, mtime=T0)})
scenario("link-dest-ivv-max-verbosity", push("-aivv", "--no-inc-recursive", "--link-dest=../prev", dest="cur/"),
         client=src_tree(), seed={"prev": Dir(pulled_tree(), mode=0o755, mtime=T0)}, params=VV)
scenario("pull-vv-max-verbosity", pull("-avv", "--no-inc-recursive"), seed=pulled_tree(), params=VV)
# the sender's "total: matches=M  hash_hits=H  false_alarms=F data=N" (match.c match_report) on deltas:
# a shifted copy; blocks sharing a weak sum with other strong sums (false alarms); a table above 65536
scenario("pull-vv-dry-run-max-verbosity", pull("-avvn", "--no-inc-recursive"), seed=pulled_tree(), params=VV)
scenario("list-only-vv-max-verbosity", rsync("--list-only", "-vv", "{mod}/"), seed=pulled_tree(), params=VV)
scenario("pull-vv-delta-max-verbosity", write("client/dst/big.bin", BIG[:90000], mtime=T0),
         pull("-avv", "--no-inc-recursive"), seed={"big.bin": File(BIG2, mtime=T0 + 900)}, params=VV)
scenario("pull-vv-delta-false-alarms", write("client/dst/rep.bin", REP_BASIS, mtime=T0),
         pull("-avv", "--no-inc-recursive", "--block-size=700"),
         seed={"rep.bin": File(REP_NEW, mtime=T0 + 900)}, params=VV)
scenario("pull-vv-delta-big-table", write("client/dst/many.bin", MANY, mtime=T0),
         pull("-avv", "--no-inc-recursive", "--block-size=32"), seed={"many.bin": File(MANY2, mtime=T0 + 900)},
         params=VV)
scenario("link-dest-vv-max-verbosity", push("-avv", "--no-inc-recursive", "--link-dest=../prev", dest="cur/"),
         client=src_tree(), seed={"prev": Dir(pulled_tree(), mode=0o755, mtime=T0)}, params=VV)
scenario("hardlinks-vv-max-verbosity", hardlink("client/src/a.txt", "client/src/a-link"),
         push("-avvH", "--no-inc-recursive"), push("-avvH", "--no-inc-recursive"), client=src_tree(),
         seed=mod_tree(), params=VV)
scenario("push-vv-default-max", push("-avv", "--no-inc-recursive", "--delete"), client=src_tree(),
         seed=mod_tree())
scenario("backup-info-backup", push("-ai", "--info=backup", "--backup", "--suffix=.v1"), client=src_tree(),
         seed=mod_tree(), history_ignore=("*.v1",), history_loose=True)

# ---------------------------------------------------------------- pulls

scenario("pull-a", pull("-ai"), seed=pulled_tree())
scenario("pull-a-twice", pull("-ai"), pull("-ai"), seed=pulled_tree())
scenario("pull-verbose-stats", pull("-av", "--stats"), seed=pulled_tree())
scenario("pull-delete", Change(lambda b: (b / "client/dst").mkdir(), "mkdir dst"),
         write("client/dst/extra", b"e\n"), pull("-ai", "--delete"), seed=pulled_tree())
scenario("pull-exclude", pull("-ai", "--exclude=*.log", "--exclude=deep"),
         seed=pulled_tree())
scenario("pull-filter-merge", write_list("client/rules", ["- *.txt"]),
         pull("-ai", "--filter=merge rules"), seed=pulled_tree())
scenario("pull-relative", rsync("-aiR", "{mod}/sub/deep/d.txt", "dst/"), seed=pulled_tree())
scenario("pull-relative-dot", rsync("-aiR", "{mod}/./sub/c.txt", "dst/"), seed=pulled_tree())
scenario("pull-single-file", pull("-ai", path="sub/c.txt"), seed=pulled_tree())
scenario("pull-subdir", pull("-ai", path="sub"), seed=pulled_tree())
scenario("pull-missing-path", pull("-ai", path="nope"), seed=pulled_tree())
scenario("pull-zstd", pull("-ai", "-z", "--compress-choice=zstd"), seed=pulled_tree())
scenario("pull-zlib", pull("-ai", "-z", "--compress-choice=zlib"), seed=pulled_tree())
scenario("pull-delta", write("client/dst/big.bin", BIG[:90000], mtime=T0),
         pull("-ai", "--stats", delta=True), seed={"big.bin": File(BIG2, mtime=T0 + 900)})
scenario("pull-delta-xxh3", write("client/dst/big.bin", BIG[:90000], mtime=T0),
         pull("-ai", "--checksum-choice=xxh3", "--stats", delta=True),
         seed={"big.bin": File(BIG2, mtime=T0 + 900)})
scenario("pull-delta-md4", write("client/dst/big.bin", BIG[:90000], mtime=T0),
         pull("-ai", "--checksum-choice=md4", "--stats", delta=True),
         seed={"big.bin": File(BIG2, mtime=T0 + 900)})
scenario("pull-checksum-md4", write("client/dst/a.txt", b"ALPHA\n", mtime=T0),
         pull("-aic", "--checksum-choice=md4"), seed=pulled_tree())
scenario("pull-checksum", write("client/dst/a.txt", b"ALPHA\n", mtime=T0),
         pull("-aic"), seed=pulled_tree())
scenario("pull-size-only", write("client/dst/b.txt", b"BRAVO BRAVO\n", mtime=T0),
         pull("-ai", "--size-only"), seed=pulled_tree())
scenario("pull-hardlinks", hardlink("mod/a.txt", "mod/a-link"), pull("-aiH"),
         seed=pulled_tree())
scenario("pull-sparse", sparse("mod/holes"), pull("-aiS"), seed=pulled_tree())
scenario("pull-inplace", write("client/dst/big.bin", BIG[:90000], mtime=T0),
         pull("-ai", "--inplace", "--stats", delta=True),
         seed={"big.bin": File(BIG2, mtime=T0 + 900)})
scenario("pull-append-verify", write("client/dst/big.bin", BIG2[:50000], mtime=T0),
         pull("-ai", "--append-verify"), seed={"big.bin": File(BIG2, mtime=T0 + 900)})
scenario("pull-dry-run", pull("-ain"), seed=pulled_tree())
scenario("pull-safe-links", pull("-ai", "--safe-links"), seed=pulled_tree(**UNSAFE))
scenario("pull-copy-links", pull("-aiL"), seed=pulled_tree())
scenario("pull-ignore-existing", write("client/dst/a.txt", b"mine\n", mtime=T0),
         pull("-ai", "--ignore-existing"), seed=pulled_tree())
scenario("pull-update", write("client/dst/a.txt", b"mine newer\n", mtime=T0 + 9999),
         pull("-aiu"), seed=pulled_tree())
scenario("pull-existing", write("client/dst/a.txt", b"mine\n", mtime=T0 + 1),
         pull("-ai", "--existing"), seed=pulled_tree())
scenario("pull-partial-dir", pull("-ai", "--partial-dir=.part"), seed=pulled_tree())
scenario("pull-type-change", write("client/dst/sub", b"file here\n", mtime=T0),
         pull("-ai", "--force"), seed=pulled_tree())
scenario("pull-fifo", mkfifo("mod/fifo"), pull("-ai"), seed=pulled_tree())
scenario("pull-mkpath", pull("-ai", "--mkpath", dest="d1/d2/"), seed=pulled_tree())

# ---------------------------------------------------------------- listings

scenario("list-modules", rsync("{host}/"))
scenario("list-only-root", rsync("--list-only", "{mod}/"), seed=pulled_tree())
scenario("list-only-recursive", rsync("--list-only", "-r", "{mod}/"), seed=pulled_tree())
scenario("list-only-file", rsync("--list-only", "{mod}/sub/c.txt"), seed=pulled_tree())
scenario("list-only-missing", rsync("--list-only", "{mod}/nope"), seed=pulled_tree())
# the daemon stops reading, waits 100 ms and exits: a client answering later reads EOF, no reset
scenario("list-only-missing-slow-client", Slow(rsync("--list-only", "{mod}/nope")), seed=pulled_tree())
scenario("list-no-dest", rsync("-a", "{mod}/sub/"), seed=pulled_tree())
scenario("list-only-exclude", rsync("--list-only", "-r", "--exclude=*.txt", "{mod}/"),
         seed=pulled_tree())
scenario("unknown-module", rsync("-ai", "src/", "{host}/nosuchmod/"), client=src_tree())

# ---------------------------------------------------------------- interrupted and concurrent

scenario("resume-after-partial-file", push("-ai", "--partial", dest="b/"),
         write("mod/b/big.bin", BIG2[:20000], mtime=T0 + 1),
         write("client/src/big.bin", BIG2, mtime=T0 + 900),
         touch_dir("mod/b", T0 + 50), touch_dir("client/src", T0 + 50),  # not "now" on either side
         push("-ai", "--partial", "--stats", dest="b/", delta=True), client=DELTA_CLIENT)
scenario("parallel-pushes", Parallel((push("-ai", dest="one/", src="src/sub/"),
                                      push("-ai", dest="two/", src="src/sub/"))),
         client=src_tree(), seed={"one": Dir({}, mtime=T0), "two": Dir({}, mtime=T0)})
scenario("parallel-push-pull", Parallel((push("-ai", dest="up/"),
                                         pull("-ai", path="sub/"))),
         client=src_tree(), seed=pulled_tree(up=Dir({}, mtime=T0)))

# ---------------------------------------------------------------- module settings

AUTH = {"auth users": f"{USER} bob:ro", "strict modes": True}
SECRETS = {USER: PASSWORD, "bob": "bobpw"}
scenario("auth-right", rsync("-ai", "src/", "{umod}/", password=PASSWORD), client=src_tree(),
         params=AUTH, secrets=SECRETS)
scenario("auth-wrong-password", rsync("-ai", "src/", "{umod}/", password="nope"),
         client=src_tree(), params=AUTH, secrets=SECRETS)
scenario("auth-unknown-user", rsync("-ai", "src/", "rsync://mallory@127.0.0.1:{port}/mod/",
                                    password=PASSWORD),
         client=src_tree(), params=AUTH, secrets=SECRETS)
scenario("auth-ro-user-push", rsync("-ai", "src/", "rsync://bob@127.0.0.1:{port}/mod/",
                                    password="bobpw"),
         client=src_tree(), params=AUTH, secrets=SECRETS)
scenario("auth-ro-user-pull", rsync("-ai", "rsync://bob@127.0.0.1:{port}/mod/", "dst/",
                                    password="bobpw"),
         seed=pulled_tree(), params=AUTH, secrets=SECRETS)
scenario("auth-password-file",
         write("client/pw", PASSWORD.encode() + b"\n", mode=0o600),
         rsync("-ai", "--password-file=pw", "src/", "{umod}/"),
         client=src_tree(), params=AUTH, secrets=SECRETS)
RO = {"read only": True}
scenario("read-only-push", push("-ai"), client=src_tree(), params=RO)
scenario("read-only-pull", pull("-ai"), seed=pulled_tree(), params=RO)
scenario("read-only-list", rsync("--list-only", "{mod}/"), seed=pulled_tree(), params=RO)
WO = {"write only": True}
scenario("write-only-push", push("-ai"), client=src_tree(), params=WO)
scenario("write-only-pull", pull("-ai"), seed=pulled_tree(), params=WO)
EXCL = {"exclude": "*.log secret/"}
scenario("module-exclude-push", push("-ai"), client=src_tree(
    secret=Dir({"s": File(b"s\n", mtime=T0)}, mtime=T0)), params=EXCL)
# without incremental recursion rsyncd does not create the refused dir either
scenario("module-exclude-push-no-inc", push("-ai", "--no-inc-recursive"), client=src_tree(
    secret=Dir({"s": File(b"s\n", mtime=T0)}, mtime=T0)), params=EXCL)
scenario("module-exclude-pull", pull("-ai"), seed=pulled_tree(
    secret=Dir({"s": File(b"s\n", mtime=T0)}, mtime=T0)), params=EXCL)
scenario("module-exclude-delete", push("-ai", "--delete"), client=src_tree(),
         seed=mod_tree(), params=EXCL)
FILT = {"filter": "- *.txt"}
scenario("module-filter-push", push("-ai"), client=src_tree(), params=FILT)
scenario("module-filter-list", rsync("--list-only", "-r", "{mod}/"), seed=pulled_tree(),
         params=FILT)
REFUSE = {"refuse options": "delete* compress"}
scenario("refuse-delete", push("-ai", "--delete"), client=src_tree(), params=REFUSE)
scenario("refuse-delete-after", push("-ai", "--delete-after"), client=src_tree(),
         params=REFUSE)
scenario("refuse-compress", push("-aiz"), client=src_tree(), params=REFUSE)
scenario("refuse-allowed", push("-ai"), client=src_tree(), params=REFUSE)
# options the daemon's own option parser rejects (clientserver.c rsync_module -> option_error, exit 4)
scenario("option-unknown-to-server", push("-ai", "-M--bogus"), client=src_tree())
scenario("option-unknown-to-server-pull", pull("-ai", "-M--no-such-option=3"), seed=pulled_tree())
scenario("option-bad-number-to-server", push("-ai", "-M--timeout=abc"), client=src_tree())
scenario("option-iconv-refused", push("-ai", "--iconv=utf8,latin1"), client=src_tree())
scenario("option-write-devices-refused", push("-ai", "-M--write-devices"), client=src_tree())
scenario("refuse-compress-pull", pull("-aiz"), seed=pulled_tree(), params=REFUSE)
MAXC = {"max connections": 1}
# rsyncd's session process keeps its slot a moment after the client exits: wait
SETTLE = Change(lambda base: time.sleep(1.5), "wait until the first session released its slot")
scenario("max-connections-free", push("-ai"), SETTLE, push("-ai"), client=src_tree(),
         params=MAXC)
scenario("max-connections-busy", Busy(push("-ai")), client=src_tree(), params=MAXC)
scenario("max-connections-busy-pull", Busy(pull("-ai")), seed=pulled_tree(), params=MAXC)
scenario("hosts-deny", push("-ai"), client=src_tree(), params={"hosts deny": "127.0.0.1"})
scenario("hosts-allow-other", push("-ai"), client=src_tree(),
         params={"hosts allow": "10.9.8.7"})
scenario("hosts-allow-local", push("-ai"), client=src_tree(),
         params={"hosts allow": "127.0.0.0/8"})
ICH = {"incoming chmod": "Dg+s,ug+w,Fo-w,+X"}
scenario("incoming-chmod", push("-ai"), client=src_tree(), params=ICH)
scenario("incoming-chmod-second", push("-ai"), push("-ai"), client=src_tree(), params=ICH)
scenario("outgoing-chmod", pull("-ai"), seed=pulled_tree(),
         params={"outgoing chmod": "F600,D700"})
scenario("munge-symlinks-push", push("-ai"), client=src_tree(**UNSAFE),
         params={"munge symlinks": True})
scenario("ignore-nonreadable", pull("-ai"), seed=pulled_tree(
    secret=File(b"s\n", mode=0o000, mtime=T0)), params={"ignore nonreadable": True})
scenario("dont-compress", push("-aiz", "--stats", delta=True), client=DELTA_CLIENT,
         seed=DELTA_SEED, params={"dont compress": "*.bin"})
scenario("module-comment-listing", rsync("{host}/"), params={"comment": "the backup module"})
scenario("list-false", rsync("{host}/"), params={"list": False})

# ---------------------------------------------------------------- alternate basis dirs, everyday commands
# and the same for old clients (--protocol=29/28/27)
from tests.differential import (  # noqa: E402 - each adds its scenarios to SCENARIOS
    scenarios_alt_dest,  # noqa: F401
    scenarios_everyday,  # noqa: F401
    scenarios_inc_recurse,  # noqa: F401
    scenarios_incremental,  # noqa: F401
    scenarios_inplace,  # noqa: F401
    scenarios_legacy,  # noqa: F401
)
