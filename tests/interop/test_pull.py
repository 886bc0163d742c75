"""Pulls by the stock clients (3.5.0 and 3.2.7): trees, deltas, listings, codecs, options.

What a user sees: exit code, the pulled tree (content, modes, mtimes,
symlinks), ``--stats``; listings compared line by line with the stock
rsyncd serving the same tree.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.helpers import Dir, File, Symlink, assert_trees_equal, make_tree, scan_tree
from tests.interop.conftest import (
    T0,
    assert_ok,
    copy_tree,
    digest,
    parse_stats,
    set_mtime,
    show,
    write_random,
)

MiB = 1 << 20
VERSIONS = ("3.5.0", "3.2.7")


@pytest.fixture(params=VERSIONS, ids=[f"c{v}" for v in VERSIONS])
def client(request, rsync_clients):
    """Each stock client in turn, at its own protocol (32)."""
    return rsync_clients[request.param]


def seed_tree(outside: str) -> dict:
    """A small tree with everything a pull must carry, all mtimes fixed."""
    return {
        "hello.txt": File("hello world\n", mode=0o644, mtime_ns=T0 * 10**9 + 123_456_789),
        "empty": File(b"", mode=0o600, mtime=T0 + 1),
        "run.sh": File("#!/bin/sh\n", mode=0o755, mtime=T0 + 2),
        "data.bin": File(random.Random(1).randbytes(150_000), mode=0o640, mtime=T0 + 3),
        "a.o": File("object\n", mtime=T0 + 4),
        "link": Symlink("hello.txt", mtime=T0 + 5),
        "escape": Symlink(outside, mtime=T0 + 6),
        "emptydir": Dir({}, mode=0o750, mtime=T0 + 7),
        "sub": Dir({
            "inner.txt": File("inner\n", mtime=T0 + 8),
            "deep": Dir({"x.py": File("print(1)\n", mtime=T0 + 9)}, mtime=T0 + 10),
        }, mode=0o711, mtime=T0 + 11),
    }


@pytest.fixture
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("outside") / "secret.txt"
    path.write_text("outside the module\n")
    return path


@pytest.fixture
def seeded(make_targets, secret):
    """backupd and stock rsyncd, each serving a copy of the same tree as module ``mod``."""
    return make_targets(seed=seed_tree(str(secret)))


def pull(target, client, *args, path="", dest):
    return client.run(*args, target.url(path), f"{dest}/")


# -- a pushed tree comes back ---------------------------------------------------------------


def test_pushed_tree_pulls_back_into_an_empty_dir(rsync_client, backupd_target, stdlib_trees, tmp_path, secret):
    client = rsync_client        # every variant: 3.5.0, 3.2.7, 3.2.7 at protocol 31, 3.5.0 at 30
    src = copy_tree(stdlib_trees["subset"], tmp_path / "src")
    make_tree(src, {"link": Symlink("json/__init__.py", mtime=T0), "escape": Symlink(str(secret), mtime=T0 + 1),
                    "empty": File(b"", mode=0o600, mtime=T0), "emptydir": Dir({}, mode=0o700, mtime=T0)})
    set_mtime(src, T0)
    assert_ok(backupd_target.push(client, "-a", f"{src}/"))
    dest = tmp_path / "dest"
    done = assert_ok(pull(backupd_target, client, "-a", "--stats", dest=dest))
    assert_trees_equal(src, dest, mtime_precision_ns=client.mtime_precision_ns)
    assert os.readlink(dest / "escape") == str(secret)      # a symlink stays a symlink
    stats = parse_stats(done.stdout)
    assert stats["Matched data"] == 0 and stats["Number of regular files transferred"] > 50


# -- delta ------------------------------------------------------------------------------------


def test_200mib_file_over_an_old_copy_is_sent_as_matched_blocks(client, backupd_target, tmp_path):
    size = 200 * MiB
    big = write_random(backupd_target.module / "big.bin", size, seed=7)
    set_mtime(big, T0 + 3600)
    dest = tmp_path / "dest"
    dest.mkdir()
    rng = random.Random(8)
    with open(big, "rb") as src, open(dest / "big.bin", "wb") as old:
        while chunk := src.read(8 * MiB):
            old.write(chunk)
        for k in range(4):                 # the client's copy differs in 4 small regions
            old.seek(k * 50 * MiB + 777)
            old.write(rng.randbytes(3000))
    set_mtime(dest / "big.bin", T0)
    done = assert_ok(pull(backupd_target, client, "-a", "--stats", path="big.bin", dest=dest))
    stats = parse_stats(done.stdout)
    assert stats["Matched data"] + stats["Literal data"] == size, done.stdout
    assert stats["Literal data"] < size // 100, done.stdout
    assert stats["Total bytes received"] < size // 50, done.stdout
    assert digest(dest / "big.bin") == digest(big)
    assert os.stat(dest / "big.bin").st_mtime_ns == (T0 + 3600) * 10**9


# -- listings: the same lines as the stock rsyncd -----------------------------------------------

LISTINGS = [
    ("",),
    ("--list-only", "-r", ""),
    ("sub",),
    ("sub/",),
    ("--list-only", "-rR", "sub/deep/x.py"),
    ("--list-only", "-r", "--exclude=*.o", "--exclude=/sub/deep/", ""),
    ("*.txt",),
    ("--list-only", "-rl", "-f", "- **/deep/x.py", "sub/"),
    ("nothing-here",),
]


def listing(target, client, args):
    *opts, path = args
    done = client.run(*opts, target.url(path))
    return done.returncode, done.stdout, [ln for ln in done.stderr.splitlines() if "Connection reset" not in ln]


def test_listings_equal_the_stock_rsyncd(client, seeded):
    for args in LISTINGS:
        ours = listing(seeded["backupd"], client, args)
        theirs = listing(seeded["rsyncd"], client, args)
        assert ours[:2] == theirs[:2], f"{args}\nbackupd: {ours}\nrsyncd: {theirs}"
        assert ours[0] in (0, 23) and (ours[0] == 0) == (not ours[2]), ours


def test_module_listing_with_d_shows_one_level(client, seeded):
    done = assert_ok(client.run(seeded["backupd"].url("")))
    names = [line.split()[-1] for line in done.stdout.splitlines()]
    assert names == [".", "a.o", "data.bin", "empty", "escape", "hello.txt", "link", "run.sh", "emptydir", "sub"]


# -- every compressor and checksum ---------------------------------------------------------------

CODECS = [("--compress-choice=" + c,) for c in ("zstd", "lz4", "zlibx", "zlib")] + [("-z",), ()]
CHECKSUMS = [("--checksum-choice=" + c,) for c in ("xxh128", "xxh3", "xxh64", "md5", "sha1")]


def test_each_compressor_and_checksum_works(client, seeded, tmp_path):
    target = seeded["backupd"]
    module = target.module
    base = tmp_path / "base"
    assert_ok(pull(target, client, "-a", dest=base))
    old = (module / "data.bin").read_bytes()
    with open(base / "data.bin", "r+b") as f:     # the client's copy: a changed block
        f.seek(70_000)
        f.write(b"\xff" * 900)
    set_mtime(base / "data.bin", T0)
    for n, extra in enumerate(CODECS + CHECKSUMS):
        dest = copy_tree(base, tmp_path / f"d{n}")
        done = assert_ok(pull(target, client, "-a", "--stats", *extra, dest=dest))
        assert (dest / "data.bin").read_bytes() == old, extra
        assert parse_stats(done.stdout)["Matched data"] > 140_000, (extra, show(done))
        assert_trees_equal(module, dest)


# -- options ------------------------------------------------------------------------------------


def test_relative_files_from_and_filters(client, seeded, tmp_path):
    target = seeded["backupd"]
    rel = tmp_path / "rel"
    assert_ok(client.run("-aR", target.url("sub/deep/x.py"), target.url("hello.txt"), f"{rel}/"))
    assert sorted(scan_tree(rel)) == [b".", b"hello.txt", b"sub", b"sub/deep", b"sub/deep/x.py"]
    assert os.stat(rel / "sub").st_mode & 0o777 == 0o711      # implied dirs keep their modes
    names = tmp_path / "names"
    names.write_text("sub/inner.txt\nrun.sh\n")
    ff = tmp_path / "ff"
    assert_ok(client.run("-a", f"--files-from={names}", target.url(""), f"{ff}/"))
    assert sorted(scan_tree(ff)) == [b".", b"run.sh", b"sub", b"sub/inner.txt"]
    assert (ff / "run.sh").read_bytes() == b"#!/bin/sh\n"
    flt = tmp_path / "flt"
    assert_ok(client.run("-a", "--exclude=*.o", "--exclude=/sub/deep/", target.url(""), f"{flt}/"))
    got = set(scan_tree(flt))
    assert b"a.o" not in got and b"sub/deep" not in got and b"sub/inner.txt" in got


def test_delete_into_a_client_dir(client, seeded, tmp_path):
    target = seeded["backupd"]
    dest = tmp_path / "dest"
    assert_ok(pull(target, client, "-a", dest=dest))
    (dest / "stale.txt").write_text("gone after the pull")
    (dest / "sub" / "old").mkdir()
    done = assert_ok(pull(target, client, "-av", "--delete", "--stats", dest=dest))
    assert "deleting stale.txt" in done.stdout and "deleting sub/old/" in done.stdout
    assert_trees_equal(target.module, dest)


def test_symlinks_are_never_followed_out_of_the_module(client, seeded, tmp_path, secret):
    target = seeded["backupd"]
    dest = tmp_path / "dest"
    done = client.run("-aL", target.url(""), f"{dest}/")
    assert done.returncode == 23, show(done)
    assert "escape" in done.stderr
    assert not (dest / "escape").exists()
    assert (dest / "link").read_text() == "hello world\n"      # an in-module link is followed
    assert all(b"outside the module" not in p.read_bytes() for p in dest.rglob("*") if p.is_file())
    done = client.run("-a", target.url("escape/"), f"{tmp_path / 'd2'}/")
    assert done.returncode == 23 and not (tmp_path / "d2" / "secret.txt").exists(), show(done)


# -- -H: hard links arrive as hard links ----------------------------------------------------


def link_groups(root) -> list[list[str]]:
    """Names that share an inode, as sorted groups (regular files only)."""
    by_inode: dict[int, list[str]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            by_inode.setdefault(os.lstat(full).st_ino, []).append(os.path.relpath(full, root))
    return sorted(sorted(names) for names in by_inode.values())


def test_hard_links_pull_as_hard_links_like_rsyncd(client, make_targets, tmp_path):
    targets = make_targets(seed={
        "a.txt": File("shared\n", mtime=T0),
        "solo.txt": File("alone\n", mtime=T0 + 1),
        "sub": Dir({"c.txt": File("three\n", mtime=T0 + 2)}, mtime=T0 + 3),
    })
    for target in targets.values():  # a.txt twice more, sub/c.txt once more, one link left outside
        os.link(target.module / "a.txt", target.module / "b.txt")
        os.link(target.module / "a.txt", target.module / "sub" / "a2.txt")
        os.link(target.module / "sub" / "c.txt", target.module / "z.txt")
        os.link(target.module / "solo.txt", tmp_path / f"outside-{target.kind}")
        for d in (target.module / "sub", target.module):
            os.utime(d, (T0 + 3, T0 + 3))
    got = {}
    for kind, target in targets.items():
        dest = tmp_path / f"dest-{kind}"
        done = assert_ok(pull(target, client, "-aH", "--stats", dest=dest))
        assert "not supported" not in done.stderr, done.stderr
        assert parse_stats(done.stdout)["Number of regular files transferred"] == 3, done.stdout
        got[kind] = link_groups(dest)
        assert_trees_equal(target.module, dest)
    assert got["backupd"] == got["rsyncd"] == [
        ["a.txt", "b.txt", "sub/a2.txt"], ["solo.txt"], ["sub/c.txt", "z.txt"]
    ]
    # a second pull over the result: nothing to send, the links stay
    again = assert_ok(pull(targets["backupd"], client, "-aH", "--stats", dest=tmp_path / "dest-backupd"))
    assert parse_stats(again.stdout)["Number of regular files transferred"] == 0, again.stdout
    assert link_groups(tmp_path / "dest-backupd") == got["rsyncd"]
