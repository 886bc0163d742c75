"""``-X``/``-XX`` against stock rsyncd 3.5.0: the same client command to both, results compared.

Both modules, and the client's trees, live on a file system that takes
``user.*`` values over 4 KiB (tests/xattr_fs.py). Stock rsyncd is the oracle:
for every step the exit code, the printed (``-i``) lines, the trees (content,
modes, mtimes) and every entry's extended attributes must be the same;
nothing here states an expected line or value. backupd keeps history (its
default); rsyncd has none, so ``history-backup/`` is left out of the
comparison and checked on its own: an xattr-only change keeps the old
attributes with the old version. Run as root, as rsyncd and backupd both are
(``uid = 0``), so every namespace but ``system.*`` takes part.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import xattr_fs
from tests.helpers import tree_differences
from tests.interop.conftest import HISTORY, MODULE, T0, _start_backupd, show

xattr_base, xattr_dir = xattr_fs.xattr_base, xattr_fs.xattr_dir  # fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="rsyncd and backupd compared as root")

BIG = bytes(range(256)) * 24  # 6 KiB
HUGE = bytes(reversed(range(256))) * 256  # 64 KiB, Linux's largest value
OTHER = re.compile(r"^(?:(?:sending|building|receiving) (?:incremental )?file list|sent \d|total size is|$)")


@pytest.fixture
def client(rsync_client):
    """Both stock clients in turn, also at protocols 31 (3.2.7) and 30 (3.5.0)."""
    return rsync_client


def write_tree(root: Path, spec: dict) -> Path:
    """``spec``: path -> (content or None for a directory, {name: value}); mtimes T0 + n."""
    root.mkdir(parents=True, exist_ok=True)
    for n, (rel, (content, attrs)) in enumerate(sorted(spec.items())):
        path = root / rel if rel != "." else root
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o644)
        for name, value in attrs.items():
            os.setxattr(path, name, value)
        os.utime(path, ns=((T0 + n) * 10**9, (T0 + n) * 10**9))
    for rel, (content, _) in sorted(spec.items(), reverse=True):  # directory times last, deepest first
        if content is None:
            path = root / rel if rel != "." else root
            path.chmod(0o755)
            os.utime(path, ns=(T0 * 10**9, T0 * 10**9))
    return root


def xattrs_of(root: Path) -> dict[str, dict[str, bytes]]:
    """path -> {name: value} of every entry under ``root`` but history."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(dirpath) == root and d == HISTORY)]
        for name in [".", *dirs, *files]:
            path = os.path.join(dirpath, name) if name != "." else dirpath
            out[os.path.relpath(path, root)] = {
                n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)
            }
    return out


SOURCE = {
    ".": (None, {b"user.top": b"root attr"}),
    "small.txt": (b"small\n", {b"user.small": b"hi", b"user.empty": b""}),
    "twin.txt": (b"twin\n", {b"user.small": b"hi", b"user.empty": b""}),  # the same set: sent by reference
    "big.bin": (b"big\n" * 100, {b"user.big": BIG, b"user.mid": b"m" * 33, b"user.huge": HUGE}),
    "many.txt": (b"many\n", {b"user.n%03d" % i: b"value %d" % i for i in range(150)}),
    "plain.txt": (b"no attrs\n", {}),
    "dir": (None, {b"user.dirattr": b"D" * 100, b"trusted.root-only": b"t" * 40}),
    "dir/inner.txt": (b"inner\n", {b"user.x": BIG[:5000], b"security.test": b"s"}),
}


class Pair:
    """The same module on stock rsyncd and on backupd, and a client source tree."""

    def __init__(self, base: Path, stock_rsyncd, backupd_server, seed: dict | None, params: dict | None) -> None:
        self.base = base
        self.modules = {}
        self.servers = {}
        for kind in ("rsyncd", "backupd"):
            work = base / kind
            module = work / MODULE
            module.mkdir(parents=True)
            if seed:
                write_tree(module, seed)
            os.utime(module, ns=(T0 * 10**9, T0 * 10**9))
            modules = {MODULE: {"path": module, "read only": False, **(params or {})}}
            if params and "uid" in params:  # the module's files belong to the session's user
                for dirpath, dirs, files in os.walk(module):
                    for name in [*dirs, *files]:
                        os.lchown(os.path.join(dirpath, name), params["uid"], params["gid"])
                os.chown(module, params["uid"], params["gid"])
            if kind == "rsyncd":
                self.servers[kind] = stock_rsyncd(modules)
            else:
                self.servers[kind] = _start_backupd(backupd_server, work, modules, None)
            self.modules[kind] = module

    def run(self, client, *args, path: str = "", into: str | None = None) -> dict:
        """``rsync args URL`` (push) or, with ``into``, ``rsync args URL into-KIND/`` (pull), on both."""
        out = {}
        for kind, server in self.servers.items():
            url = server.url(MODULE, path)
            if into is None:
                out[kind] = client.run(*args, url)
            else:
                dest = self.base / f"{into}-{kind}"
                dest.mkdir(exist_ok=True)
                out[kind] = client.run(*args, "--exclude=/history-backup", url, f"{dest}/")
        return out

    def compare(self, done: dict, trees: tuple[Path, Path] | None = None) -> None:
        """Same exit code, printed lines, messages, trees and xattrs (default: the two modules)."""
        stock, ours = done["rsyncd"], done["backupd"]
        both = f"--- rsyncd\n{show(stock)}\n\n--- backupd\n{show(ours)}"
        assert ours.returncode == stock.returncode, both
        lines = [[ln for ln in d.stdout.splitlines() if not OTHER.match(ln)] for d in (stock, ours)]
        assert lines[1] == lines[0], both
        a, b = trees or (self.modules["rsyncd"], self.modules["backupd"])
        diffs = tree_differences(a, b, check_dir_mtimes=False)
        assert not diffs, "\n".join(diffs) + "\n" + both
        xa, xb = xattrs_of(a), xattrs_of(b)
        bad = {
            p: (sorted(xa.get(p, {})), sorted(xb.get(p, {})))
            for p in xa.keys() | xb.keys()
            if xa.get(p) != xb.get(p)
        }
        assert not bad, f"xattrs differ (rsyncd, backupd): {bad}\n{both}"


@pytest.fixture
def pair(xattr_dir, stock_rsyncd, backupd_server):
    """Factory: ``pair(seed=None, params=None) -> Pair``."""
    return lambda seed=None, params=None: Pair(xattr_dir, stock_rsyncd, backupd_server, seed, params)


def changed(spec: dict) -> dict:
    """SOURCE after an xattr-only change: values changed (small, over 32 bytes, 64 KiB), removed, added."""
    spec = {k: (c, dict(a)) for k, (c, a) in spec.items()}
    spec["small.txt"][1][b"user.small"] = b"changed"
    spec["big.bin"][1][b"user.big"] = BIG[::-1]
    del spec["big.bin"][1][b"user.mid"]
    spec["many.txt"][1].pop(b"user.n007")
    spec["many.txt"][1][b"user.added"] = b"A" * 50
    spec["dir"][1][b"user.dirattr"] = b"E" * 100
    spec["."][1].clear()
    return spec


def test_push_new_tree(pair, client, xattr_dir):
    src = write_tree(xattr_dir / "src", SOURCE)
    p = pair()
    p.compare(p.run(client, "-aXi", f"{src}/"))
    p.compare(p.run(client, "-aXi", f"{src}/"))  # nothing to do: nothing printed


def test_push_xattr_only_change_keeps_history(pair, client, xattr_dir):
    p = pair(seed=SOURCE)
    src = write_tree(xattr_dir / "src", changed(SOURCE))
    ino = os.stat(p.modules["backupd"] / "big.bin").st_ino
    done = p.run(client, "-aXi", f"{src}/")
    p.compare(done)
    assert ".f........x big.bin" in done["backupd"].stdout  # the case the issue names, printed by both
    history = p.modules["backupd"] / HISTORY
    (day,) = os.listdir(history)
    kept = history / day / "big.bin"
    assert os.stat(kept).st_ino == ino  # the old inode, with its old attributes
    old = {k.decode(): v for k, v in SOURCE["big.bin"][1].items()}
    assert xattrs_of(kept.parent)["big.bin"] == old  # user.mid included, removed from the live file
    assert b"user.mid" not in [os.fsencode(n) for n in os.listxattr(p.modules["backupd"] / "big.bin")]


def test_push_content_and_xattr_changes_together(pair, client, xattr_dir):
    p = pair(seed=SOURCE)
    spec = changed(SOURCE)
    spec["big.bin"] = (b"new content\n" * 300, spec["big.bin"][1])  # transfer + x
    spec["many.txt"] = (b"other\n", SOURCE["many.txt"][1])  # transfer, attrs equal: copied from the basis
    spec["dir/inner.txt"] = (b"changed inner\n", SOURCE["dir/inner.txt"][1])
    src = write_tree(xattr_dir / "src", spec)
    p.compare(p.run(client, "-aXi", f"{src}/"))


def test_push_dry_run_changes_nothing(pair, client, xattr_dir):
    p = pair(seed=SOURCE)
    src = write_tree(xattr_dir / "src", changed(SOURCE))
    before = xattrs_of(p.modules["backupd"])
    p.compare(p.run(client, "-aXin", f"{src}/"))
    assert xattrs_of(p.modules["backupd"]) == before


def test_push_with_delete_and_hard_links(pair, client, xattr_dir):
    p = pair(seed={**SOURCE, "gone.txt": (b"gone\n", {b"user.g": BIG})})
    src = write_tree(xattr_dir / "src", changed(SOURCE))
    os.link(src / "small.txt", src / "small-link.txt")
    p.compare(p.run(client, "-aXHi", "--delete", f"{src}/"))


def test_push_double_x_sends_rsync_percent_names(pair, client, xattr_dir):
    spec = {".": (None, {}), "f": (b"f\n", {b"user.rsync.%stat": b"100644 0,0 0:0", b"user.a": b"1"})}
    src = write_tree(xattr_dir / "src", spec)
    p = pair()
    p.compare(p.run(client, "-aXi", f"{src}/"))
    assert os.listxattr(p.modules["backupd"] / "f") == ["user.a"]
    p.compare(p.run(client, "-aXXi", f"{src}/"))
    assert sorted(os.listxattr(p.modules["backupd"] / "f")) == ["user.a", "user.rsync.%stat"]


def test_pull_new_and_xattr_only_change(pair, client):
    p = pair(seed=SOURCE)
    p.compare(p.run(client, "-aXi", into="dst"), trees=(p.base / "dst-rsyncd", p.base / "dst-backupd"))
    for module in p.modules.values():  # the same xattr-only change in both modules
        shutil.rmtree(module / HISTORY, ignore_errors=True)
        os.setxattr(module / "big.bin", b"user.big", BIG[::-1])
        os.removexattr(module / "many.txt", b"user.n042")
        os.setxattr(module / "dir", b"user.new", b"N" * 70)
    p.compare(p.run(client, "-aXi", into="dst"), trees=(p.base / "dst-rsyncd", p.base / "dst-backupd"))


NOBODY = {"uid": 65534, "gid": 65534}


def test_non_root_session_keeps_only_user_names(pair, client, xattr_dir):
    """A session as nobody: trusted.* and security.* are dropped, user.* kept, then changed."""
    os.chmod(xattr_dir, 0o755)
    p = pair(params=NOBODY)
    src = write_tree(xattr_dir / "src", SOURCE)
    p.compare(p.run(client, "-rltXi", f"{src}/"))
    assert not any(n.startswith(("trusted.", "security.")) for a in xattrs_of(p.modules["backupd"]).values() for n in a)
    src2 = write_tree(xattr_dir / "src2", changed(SOURCE))
    p.compare(p.run(client, "-rltXi", f"{src2}/"))


def test_non_root_read_only_entries_get_their_xattrs(pair, client, xattr_dir):
    """Non-root: a mode 0555 directory and 0444 file still take an xattr-only change (rsync adds u+w for it)."""
    os.chmod(xattr_dir, 0o755)
    spec = {".": (None, {}), "ro": (None, {b"user.d": b"1"}), "ro/f": (b"f\n", {b"user.f": b"1"})}
    p = pair(seed=spec, params=NOBODY)
    for module in p.modules.values():
        os.chmod(module / "ro/f", 0o444)
        os.chmod(module / "ro", 0o555)
    spec["ro"][1][b"user.d"], spec["ro/f"][1][b"user.f"] = b"2" * 40, b"2"
    src = write_tree(xattr_dir / "src", spec)
    os.chmod(src / "ro/f", 0o444)
    os.chmod(src / "ro", 0o555)
    p.compare(p.run(client, "-aXi", f"{src}/"))
    history = p.modules["backupd"] / HISTORY
    (day,) = os.listdir(history)
    assert os.getxattr(history / day / "ro/f", b"user.f") == b"1"  # kept, with its old value, though ro/ is 0555
    assert (history / day / "ro/f").read_bytes() == b"f\n"


FILTERED = {
    ".": (None, {}),
    "f.txt": (b"f\n", {b"user.keep": b"1", b"user.secret1": b"s" * 40, b"user.private": b"p", b"trusted.t": b"t"}),
    "g.txt": (b"g\n", {b"user.secret2": b"x"}),
}


@pytest.mark.parametrize("params", [{}, {"filter": "-x user.private"}], ids=["client-rules", "module-rule-too"])
def test_xattr_filter_rules_push_and_pull(pair, client, xattr_dir, params):
    """``-x`` rules: excluded names are neither sent, kept nor removed (rsync saw_xattr_filter)."""
    seed = {k: (c, dict(a)) for k, (c, a) in FILTERED.items()}
    seed["f.txt"][1][b"user.secret1"] = b"old secret"
    seed["g.txt"][1][b"user.private"] = b"module only"
    p = pair(seed=seed, params=params)
    src = write_tree(xattr_dir / "src", FILTERED)
    p.compare(p.run(client, "-aXi", "--delete", "--filter=-x user.secret*", f"{src}/"))
    p.compare(p.run(client, "-aXi", "--filter=-x user.secret*", into="dst"),
              trees=(p.base / "dst-rsyncd", p.base / "dst-backupd"))


def test_pull_dry_run_and_listing(pair, client):
    p = pair(seed=SOURCE)
    p.compare(p.run(client, "-aXi", into="dst"), trees=(p.base / "dst-rsyncd", p.base / "dst-backupd"))
    for module in p.modules.values():
        shutil.rmtree(module / HISTORY, ignore_errors=True)
        os.setxattr(module / "big.bin", b"user.big", BIG[::-1])
    p.compare(p.run(client, "-aXin", into="dst"), trees=(p.base / "dst-rsyncd", p.base / "dst-backupd"))
    listed = p.run(client, "-rX", "--list-only")
    assert listed["backupd"].returncode == listed["rsyncd"].returncode == 0, show(listed["backupd"])
    names = [[ln.split()[-1] for ln in d.stdout.splitlines()] for d in (listed["rsyncd"], listed["backupd"])]
    assert names[1] == names[0]


def test_xattr_only_change_of_hard_linked_files(pair, client, xattr_dir):
    """-H: the names of one inode share its attributes; an xattr-only change must not split them."""
    p = pair()
    src = write_tree(xattr_dir / "src", {".": (None, {}), "a": (b"a\n", {b"user.x": b"1" * 40})})
    os.link(src / "a", src / "b")
    p.compare(p.run(client, "-aXHi", f"{src}/"))
    os.setxattr(src / "a", b"user.x", b"2" * 40)
    done = p.run(client, "-aXHi", f"{src}/")
    # printed lines differ (which member -H treats as the leader; see the report): not compared
    assert done["backupd"].returncode == done["rsyncd"].returncode == 0, show(done["backupd"])
    p.compare({k: subprocess.CompletedProcess(d.args, d.returncode, "", "") for k, d in done.items()})
    ours = p.modules["backupd"]
    assert os.stat(ours / "a").st_ino == os.stat(ours / "b").st_ino
    history = ours / HISTORY
    (day,) = os.listdir(history)
    (kept,) = os.listdir(history / day)  # a copy of the one name the change went through
    assert os.getxattr(history / day / kept, b"user.x") == b"1" * 40


def test_non_root_with_xattr_rules_keeps_other_namespaces_as_rsync_names(pair, client, xattr_dir):
    """Non-root and an ``x`` rule: trusted.*/security.* are kept as user.rsync.<name> (receive_xattr)."""
    os.chmod(xattr_dir, 0o755)
    p = pair(params=NOBODY)
    src = write_tree(xattr_dir / "src", SOURCE)
    p.compare(p.run(client, "-rltXi", "--delete", "--filter=-x user.none", f"{src}/"))
    names = {n for a in xattrs_of(p.modules["backupd"]).values() for n in a}
    assert "user.rsync.trusted.root-only" in names and "user.rsync.security.test" in names
    p.compare(p.run(client, "-rltXi", "--filter=-x user.none", into="dst"),
              trees=(p.base / "dst-rsyncd", p.base / "dst-backupd"))


def test_push_inplace(pair, client, xattr_dir):
    p = pair(seed=SOURCE)
    spec = changed(SOURCE)
    spec["big.bin"] = (b"rewritten in place\n" * 50, spec["big.bin"][1])
    src = write_tree(xattr_dir / "src", spec)
    p.compare(p.run(client, "-aXi", "--inplace", f"{src}/"))
