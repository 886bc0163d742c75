"""storage/acls.py: reading ACLs as rsync sends them, setting received ones, ACL-only updates."""

from __future__ import annotations

import os
from datetime import datetime

import posix1e
import pytest

from backupd.protocol.acls import IdAccess, RsyncAcl
from backupd.storage import HistoryStore, ModuleTree
from backupd.storage.acls import access_to_set
from tests import xattr_fs

xattr_base, xattr_dir = xattr_fs.xattr_base, xattr_fs.xattr_dir  # fixtures (XFS has ACLs)
NOW = datetime(2026, 3, 4, 5, 6, 7)


def text(path, default=False) -> str:
    acl = posix1e.ACL(filedef=str(path)) if default else posix1e.ACL(file=str(path))
    return acl.to_any_text(separator=b",", options=posix1e.TEXT_NUMERIC_IDS).decode()


@pytest.fixture
def module(xattr_dir):
    root = xattr_dir / "mod"
    (root / "d").mkdir(parents=True)
    (root / "f").write_bytes(b"f\n")
    posix1e.ACL(text="u::rw-,u:1000:r--,g::r--,m::r--,o::---").applyto(str(root / "f"))
    posix1e.ACL(text="u::rwx,g::r-x,g:1000:rwx,m::rwx,o::---").applyto(str(root / "d"), posix1e.ACL_TYPE_DEFAULT)
    return root


def test_read_gives_the_full_acls(module):
    with ModuleTree(module, module="m") as tree:
        access, default = tree.acls.get(b"f")
        assert access == RsyncAcl(6, 4, 4, 0, (IdAccess(1000, 4, True),)) and default is None
        access, default = tree.acls.get(b"d")
        assert default == RsyncAcl(7, 5, 7, 0, (IdAccess(1000, 7, False),))
        assert tree.acls.get(b"missing") is None


def test_set_takes_the_mode_for_what_it_carries():
    got = access_to_set(RsyncAcl(None, 4, 7, None, (IdAccess(5, 6, True),)), 0o750)
    assert got == RsyncAcl(7, 4, 5, 0, (IdAccess(5, 6, True),))


def test_acl_only_update_keeps_the_old_acl_in_history(module):
    ino = os.stat(module / "f").st_ino
    tree = ModuleTree(module, module="m", history=HistoryStore(clock=lambda: NOW))
    with tree:
        assert tree.acls.update_file(b"f", RsyncAcl(), None, 0o640) == []
        assert tree.acls.set_in_place(b"d", RsyncAcl(), RsyncAcl(), 0o755) == []
    assert os.stat(module / "f").st_ino != ino
    assert text(module / "f") == "user::rw-,group::r--,other::---"
    assert text(module / "d", default=True) == ""
    kept = module / "history-backup" / NOW.strftime("%Y-%m-%d") / "f"
    assert os.stat(kept).st_ino == ino and "user:1000:r--" in text(kept)
