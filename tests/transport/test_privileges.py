"""resolve_identity / switch_to: names and numbers, rsyncd's refusals, a real switch in a child."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from backupd.errors import DaemonRefusal
from backupd.transport.privileges import Identity, nobody_group, resolve_identity, session_identity, switch_to

ROOT = pwd.getpwuid(0)


def test_names_and_numbers_resolve_to_ids():
    assert resolve_identity(ROOT.pw_name, None) == Identity(0, None)  # uid alone: the group stays as it is
    assert resolve_identity("0", grp.getgrgid(0).gr_name) == Identity(0, 0)
    assert resolve_identity(None, "4242") == Identity(None, 4242)
    assert resolve_identity("4242", None) == Identity(4242, None)  # a number with no passwd entry
    assert resolve_identity(None, None) == Identity(None, None)


@pytest.mark.parametrize(("uid", "gid", "message"), [
    ("no-such-user-xyz", None, "invalid uid no-such-user-xyz"),
    (None, "no-such-group-xyz", "invalid gid no-such-group-xyz"),
])
def test_unknown_names_are_refused_with_rsyncds_message(uid, gid, message):
    with pytest.raises(DaemonRefusal, match=message):
        resolve_identity(uid, gid)


def test_a_root_server_defaults_unset_ids_to_nobody_and_nogroup():
    nobody, group = pwd.getpwnam("nobody").pw_uid, grp.getgrnam(nobody_group()).gr_gid
    assert session_identity(None, None, as_root=True) == Identity(nobody, group)
    assert session_identity("", "", as_root=True) == Identity(nobody, group)
    assert session_identity("0", None, as_root=True) == Identity(0, group)  # a uid alone: NOBODY_GROUP
    assert session_identity(None, "0", as_root=True) == Identity(nobody, 0)
    assert session_identity(None, None, as_root=False) == Identity(None, None)
    assert session_identity("4242", None, as_root=False) == Identity(4242, None)


def test_nothing_to_switch_to_is_no_switch():
    assert switch_to(Identity(None, None)) is False


def _in_child(fn) -> str:
    """Run ``fn`` in a forked child (its credentials change for good); its returned text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                out = f"{type(exc).__name__}: {exc}"
            os.write(write, out.encode())
        finally:
            os._exit(0)
    os.close(write)
    got = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return got


def test_a_non_root_process_keeps_its_own_ids_and_refuses_others():
    nobody = pwd.getpwnam("nobody")

    def unprivileged(target) -> str:
        def run() -> str:
            if os.geteuid() == 0:  # become an ordinary user first
                switch_to(Identity(nobody.pw_uid, nobody.pw_gid))
            return str(switch_to(target()))

        return _in_child(run)

    assert unprivileged(lambda: Identity(os.getuid(), os.getgid())) == "False"
    assert unprivileged(lambda: Identity(0, None)) == "DaemonRefusal: setuid failed"
    assert unprivileged(lambda: Identity(None, 0)) == "DaemonRefusal: setgid failed"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_root_process_becomes_the_user_for_good():
    nobody = pwd.getpwnam("nobody")

    def run() -> str:
        switched = switch_to(Identity(nobody.pw_uid, nobody.pw_gid))
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        return f"{switched} {os.getuid()} {os.geteuid()} {os.getgid()} {os.getgroups()} {regained}"

    got = _in_child(run)
    assert got == f"True {nobody.pw_uid} {nobody.pw_uid} {nobody.pw_gid} [{nobody.pw_gid}] False"
