"""``-A`` (with ``-X``) against stock rsyncd 3.5.0: the same client command to both, results compared.

As tests/interop/test_xattrs.py (same module pair, same comparison of exit
codes, printed lines, trees and xattrs), plus every entry's access ACL and,
for directories, default ACL. Stock rsyncd is the oracle. Run as root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import posix1e
import pytest

from tests import xattr_fs
from tests.interop.test_xattrs import HISTORY, SOURCE, Pair, write_tree

xattr_base, xattr_dir = xattr_fs.xattr_base, xattr_fs.xattr_dir  # fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="rsyncd and backupd compared as root")

FILE_ACL = "u::rw-,u:1000:rw-,u:65534:r--,g::r--,g:100:rwx,m::rwx,o::---"
DIR_ACL = "u::rwx,g::r-x,g:1000:r-x,m::r-x,o::r-x"
DIR_DEFAULT = "u::rwx,u:1000:rwx,g::r-x,m::rwx,o::---"


@pytest.fixture
def client(rsync_client):
    """Both stock clients, also at protocols 31 and 30."""
    return rsync_client


@pytest.fixture
def pair(xattr_dir, stock_rsyncd, backupd_server):
    return lambda seed=None: Pair(xattr_dir, stock_rsyncd, backupd_server, seed, None)


def set_acls(root: Path, acls: dict[str, tuple[str | None, str | None]]) -> None:
    """path -> (access ACL text or None, default ACL text or None ('' deletes)); mtimes kept."""
    for rel, (access, default) in acls.items():
        path = root / rel if rel != "." else root
        st = os.stat(path)
        if access:
            posix1e.ACL(text=access).applyto(str(path))
        if default == "":
            posix1e.delete_default(str(path))
        elif default:
            posix1e.ACL(text=default).applyto(str(path), posix1e.ACL_TYPE_DEFAULT)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def acls_of(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(dirpath) == root and d == HISTORY)]
        for name in [".", *dirs, *files]:
            path = os.path.join(dirpath, name) if name != "." else dirpath
            if os.path.islink(path):
                continue
            default = posix1e.ACL(filedef=path).to_any_text(separator=b",") if os.path.isdir(path) else b""
            out[os.path.relpath(path, root)] = (posix1e.ACL(file=path).to_any_text(separator=b","), default)
    return out


def compare_acls(a: Path, b: Path) -> None:
    xa, xb = acls_of(a), acls_of(b)
    bad = {p: (xa.get(p), xb.get(p)) for p in xa.keys() | xb.keys() if xa.get(p) != xb.get(p)}
    assert not bad, f"ACLs differ (rsyncd, backupd): {bad}"


ACLS = {"small.txt": (FILE_ACL, None), "twin.txt": (FILE_ACL, None), "dir": (DIR_ACL, DIR_DEFAULT),
        "dir/inner.txt": ("u::rw-,g::r--,g:1000:rw-,m::rw-,o::r--", None)}


def test_push_new_tree_and_acl_only_change(pair, client, xattr_dir):
    src = write_tree(xattr_dir / "src", SOURCE)
    set_acls(src, ACLS)
    p = pair()
    p.compare(p.run(client, "-aAXi", f"{src}/"))
    compare_acls(*p.modules.values())
    set_acls(src, {"small.txt": ("u::rw-,u:1000:r--,g::r--,m::r--,o::---", None), "dir": (None, ""),
                   "many.txt": (FILE_ACL, None), "twin.txt": ("u::rw-,g::r--,o::---", None)})
    done = p.run(client, "-aAXi", f"{src}/")
    p.compare(done)
    compare_acls(*p.modules.values())
    history = p.modules["backupd"] / HISTORY
    (day,) = os.listdir(history)
    old = posix1e.ACL(file=str(history / day / "small.txt")).to_any_text(separator=b",").decode()
    assert "user:1000:rw-" in old or "user:cloudsdk:rw-" in old  # the old ACL kept with the old version


def _pull_compared(p, client, *opts: str, into: str = "dst") -> None:
    """Pull into ``into-rsyncd`` and ``into-backupd``: same output, trees and ACLs."""
    trees = (p.base / f"{into}-rsyncd", p.base / f"{into}-backupd")
    p.compare(p.run(client, *opts, into=into), trees=trees)
    compare_acls(*trees)


def test_pull_with_acls(pair, client, xattr_dir):
    p = pair(seed=SOURCE)
    for module in p.modules.values():
        set_acls(module, ACLS)
    _pull_compared(p, client, "-aAXi")
    for module in p.modules.values():
        shutil.rmtree(module / HISTORY, ignore_errors=True)
        set_acls(module, {"small.txt": ("u::rw-,g::rw-,o::r--", None), "dir": (None, "")})
    _pull_compared(p, client, "-aAXi")


def test_push_content_and_acl_changes_dry_run_and_new_dirs(pair, client, xattr_dir):
    p = pair(seed=SOURCE)
    for module in p.modules.values():
        set_acls(module, ACLS)
    spec = dict(SOURCE)
    spec["small.txt"] = (b"new content\n", SOURCE["small.txt"][1])
    spec["newdir"] = (None, {})
    spec["newdir/f"] = (b"f\n", {})
    src = write_tree(xattr_dir / "src", spec)
    set_acls(src, {**ACLS, "small.txt": ("u::rwx,g::r--,g:100:r-x,m::r-x,o::---", None),
                   "newdir": ("u::rwx,g::r-x,o::---", DIR_DEFAULT), "newdir/f": (FILE_ACL, None)})
    before = acls_of(p.modules["backupd"])
    p.compare(p.run(client, "-aAXin", f"{src}/"))
    assert acls_of(p.modules["backupd"]) == before
    p.compare(p.run(client, "-aAXi", f"{src}/"))
    compare_acls(*p.modules.values())


def test_push_inplace_with_acls(pair, client, xattr_dir):
    p = pair(seed=SOURCE)
    spec = dict(SOURCE)
    spec["small.txt"] = (b"other content\n", SOURCE["small.txt"][1])
    src = write_tree(xattr_dir / "src", spec)
    set_acls(src, ACLS)
    p.compare(p.run(client, "-aAXi", "--inplace", f"{src}/"))
    compare_acls(*p.modules.values())


def test_pull_with_acls_incremental(pair, client, xattr_dir):
    """-v shows the incremental list: the ACL names go inline (acls.c send_ida_entries, inc_recurse)."""
    p = pair(seed=SOURCE)
    for module in p.modules.values():
        set_acls(module, ACLS)
    _pull_compared(p, client, "-aAXv")
    _pull_compared(p, client, "-aAXv", "--numeric-ids", into="dst2")
