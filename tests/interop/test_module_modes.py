"""Module settings that rewrite what a client sends or gets: ``incoming chmod``,
``outgoing chmod`` and ``munge symlinks``, each checked against the stock
rsyncd given the same module settings and the same push or pull.
"""

from __future__ import annotations

import os
import stat

import pytest

from tests.helpers import Dir, File, Symlink, make_tree
from tests.interop.conftest import T0, assert_ok

VERSIONS = ("3.5.0", "3.2.7")
CHMOD = "Dg+s,ug+w,Fo-w,+X"


@pytest.fixture(params=VERSIONS, ids=[f"c{v}" for v in VERSIONS])
def client(request, rsync_clients):
    """Each stock client in turn, at its own protocol (32)."""
    return rsync_clients[request.param]


def mode_tree() -> dict:
    """Files and directories with modes that each clause of CHMOD changes differently."""
    return {
        "private": File("p\n", mode=0o600, mtime=T0),
        "script": File("#!/bin/sh\n", mode=0o755, mtime=T0),
        "group-read": File("g\n", mode=0o640, mtime=T0),
        "world-write": File("w\n", mode=0o666, mtime=T0),
        "owner-x": File("x\n", mode=0o700, mtime=T0),
        "link": Symlink("private", mtime=T0),
        "closed": Dir({"inner": File("i\n", mode=0o604, mtime=T0)}, mode=0o700, mtime=T0),
        "open": Dir({}, mode=0o755, mtime=T0),
    }


def modes(root) -> dict[str, int]:
    """Module-relative path -> lstat st_mode of everything but the history folder."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "history-backup"]
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = os.lstat(full).st_mode
    return out


def test_incoming_chmod_gives_the_modes_rsyncd_gives(client, make_targets, tmp_path):
    src = make_tree(tmp_path / "src", mode_tree())
    targets = make_targets(params={"incoming chmod": CHMOD})
    got = {}
    for kind, target in targets.items():
        assert_ok(target.push(client, "-a", f"{src}/"))
        got[kind] = modes(target.module)
    assert got["backupd"] == got["rsyncd"]
    # the spec really applied (not a plain copy of the source modes)
    assert stat.S_IMODE(got["backupd"]["private"]) == 0o620
    assert got["backupd"]["closed"] & stat.S_ISGID


def test_outgoing_chmod_gives_the_modes_rsyncd_gives(client, make_targets, tmp_path):
    targets = make_targets(params={"outgoing chmod": "F600,D700"}, seed=mode_tree())
    got = {}
    for kind, target in targets.items():
        dest = tmp_path / kind
        assert_ok(client.run("-a", target.url(""), f"{dest}/"))
        got[kind] = modes(dest)
    assert got["backupd"] == got["rsyncd"]
    assert {stat.S_IMODE(m) for p, m in got["backupd"].items() if not stat.S_ISLNK(m)} == {0o600, 0o700}


def test_munge_symlinks_stores_the_prefix_and_strips_it_on_pull(client, make_targets, tmp_path):
    src = make_tree(tmp_path / "src", {"up": Symlink("/etc/passwd"), "rel": Symlink("../x")})
    targets = make_targets(params={"munge symlinks": True})
    for target in targets.values():
        assert_ok(target.push(client, "-a", f"{src}/"))
    for name, want in (("up", "/etc/passwd"), ("rel", "../x")):
        stored = {kind: os.readlink(t.module / name) for kind, t in targets.items()}
        assert stored["backupd"] == stored["rsyncd"] == "/rsyncd-munged/" + want
    # a second push sees the munged links as up to date: nothing is replaced
    again = assert_ok(targets["backupd"].push(client, "-ai", f"{src}/"))
    assert not [ln for ln in again.stdout.splitlines() if ln.startswith((">", "c"))], again.stdout
    assert not (targets["backupd"].module / "history-backup").exists()
    back = tmp_path / "back"
    assert_ok(client.run("-a", targets["backupd"].url(""), f"{back}/"))
    assert os.readlink(back / "up") == "/etc/passwd"
    assert os.readlink(back / "rel") == "../x"
