"""``uid``/``gid`` of a module: a root server runs the session as that user,
as the stock rsyncd does (both given the same settings): files are created
by that user, a module it may not write fails per file, an unknown name is
refused before the transfer. Root only (the servers must be able to switch).
"""

from __future__ import annotations

import os
import pwd

import pytest

from tests.helpers import File, make_tree
from tests.interop.conftest import T0, show

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a root server")

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None


@pytest.fixture
def client(rsync_clients):
    return rsync_clients["3.5.0"]


def owned_module(make_targets, owner: int | None):
    """Targets whose module runs as nobody; the module dir is chowned to ``owner`` (None: stays root)."""
    targets = make_targets(params={"uid": "nobody", "gid": str(NOBODY.pw_gid)})
    for target in targets.values():
        if owner is not None:
            os.chown(target.module, owner, NOBODY.pw_gid)
    return targets


def test_session_runs_as_the_module_user(make_targets, client, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": File("a\n", mtime=T0), "d": {"b.txt": File("b\n", mtime=T0)}})
    for kind, target in owned_module(make_targets, NOBODY.pw_uid).items():
        done = target.push(client, "-rt", f"{src}/")
        assert done.returncode == 0, f"{kind}: {show(done)}"
        for rel in ("a.txt", "d", "d/b.txt"):
            st = (target.module / rel).lstat()
            assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), (kind, rel)
    # history is written as that user too, and nothing escapes its rights
    target = owned_module(make_targets, NOBODY.pw_uid)["backupd"]
    assert target.push(client, "-rt", f"{src}/").returncode == 0
    (src / "a.txt").write_text("A\n")
    assert target.push(client, "-rt", f"{src}/").returncode == 0
    kept = [p for p in target.history.rglob("a.txt*")]
    assert [p.read_text() for p in kept] == ["a\n"] and kept[0].stat().st_uid == NOBODY.pw_uid


def test_module_the_user_may_not_write_fails_like_rsyncd(make_targets, client, tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": File("a\n", mtime=T0)})
    codes = {}
    for kind, target in owned_module(make_targets, None).items():  # root-owned 0755 module dir
        done = target.push(client, "-rt", f"{src}/")
        codes[kind] = done.returncode
        assert "Permission denied" in done.stderr, f"{kind}: {show(done)}"
        assert not (target.module / "a.txt").exists()
    assert codes["backupd"] == codes["rsyncd"] == 23


@pytest.mark.parametrize("param", ["uid", "gid"])
def test_unknown_user_or_group_is_refused_like_rsyncd(make_targets, client, tmp_path, param):
    src = make_tree(tmp_path / "src", {"a.txt": File("a\n", mtime=T0)})
    for kind, target in make_targets(params={param: "no-such-name-xyz"}).items():
        done = target.push(client, "-rt", f"{src}/")
        assert done.returncode == 5, f"{kind}: {show(done)}"
        assert f"@ERROR: invalid {param} no-such-name-xyz" in done.stderr, f"{kind}: {show(done)}"


@pytest.mark.parametrize(("params", "want"), [
    ({"uid": "", "gid": ""}, ("nobody", "nogroup")),  # neither set: rsyncd's NOBODY_USER/NOBODY_GROUP
    ({"uid": "daemon", "gid": ""}, ("daemon", "nogroup")),  # a uid alone: not its primary group
    ({"uid": "", "gid": "daemon"}, ("nobody", "daemon")),
])
def test_unset_uid_or_gid_of_a_root_server_is_nobody_like_rsyncd(make_targets, client, tmp_path, params, want):
    """Issue 15.6: a root server never runs a session as root unless the module says so."""
    import grp

    uid, gid = pwd.getpwnam(want[0]).pw_uid, grp.getgrnam(want[1]).gr_gid
    src = make_tree(tmp_path / "src", {"a.txt": File("a\n", mtime=T0), "d": {"b.txt": File("b\n", mtime=T0)}})
    owners = {}
    for kind, target in make_targets(params=params).items():
        os.chown(target.module, uid, gid)  # the session's own module dir, so "." takes its mtime
        done = target.push(client, "-rt", f"{src}/")
        assert done.returncode == 0, f"{kind}: {show(done)}"
        owners[kind] = [((target.module / r).lstat().st_uid, (target.module / r).lstat().st_gid)
                        for r in ("a.txt", "d", "d/b.txt")]
    assert owners["rsyncd"] == [(uid, gid)] * 3
    assert owners["backupd"] == owners["rsyncd"]
