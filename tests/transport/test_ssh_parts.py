"""The SSH transport's pure parts: exec commands, module paths, authorized_keys paths, logins."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backupd.config.model import AuthUser, DaemonConfig, ModuleConfig
from backupd.errors import DaemonRefusal
from backupd.roles.shell_session import module_name_of
from backupd.transport.ssh import Refused, parse_command
from backupd.transport.ssh_auth import (
    FailureLog,
    authorized_keys_path,
    ensure_host_key,
    load_authorized_keys,
    password_matches,
)


@pytest.mark.parametrize(
    ("command", "want"),
    [
        ("rsync --server -logDtpre.iLsfxCIvu . mod/", ("shell", [b"--server", b"-logDtpre.iLsfxCIvu", b".", b"mod/"])),
        ("rsync --server --sender -logDtpre.iLsfxCIvu . mod/a\\ b", ("shell",
         [b"--server", b"--sender", b"-logDtpre.iLsfxCIvu", b".", b"mod/a b"])),
        ("/usr/bin/rsync --server -r . 'mod/it''s'", ("shell", [b"--server", b"-r", b".", b"mod/its"])),
        ("rsync --server --daemon .", ("daemon", [])),
        ("rsync --server --sender -slogDtpre.iLsfxCIvu",
         ("shell", [b"--server", b"--sender", b"-slogDtpre.iLsfxCIvu"])),
    ],
)
def test_rsync_server_commands_are_accepted(command, want):
    assert parse_command(command) == want


@pytest.mark.parametrize(
    "command",
    [
        "cat /etc/passwd",
        "sh -c 'rsync --server . mod/'",
        "rsync --version",
        "rsync --server",
        "rsync --server -r mod/",  # no "." before the paths
        "rsync --server -s mod/",  # -s: options only on the command line
        "rsync --server --daemon --config=/etc/passwd .",
        "rsync --server --daemon . extra",
        "rsync --server 'unbalanced",
        "",
    ],
)
def test_other_commands_are_refused(command):
    with pytest.raises(Refused, match="command refused"):
        parse_command(command)


@pytest.mark.parametrize(
    ("paths", "want"),
    [([b"mod"], b"mod"), ([b"mod/"], b"mod"), ([b"mod/a/b"], b"mod"), ([b"mod/a", b"mod/b"], b"mod")],
)
def test_module_is_the_first_path_component(paths, want):
    assert module_name_of(paths) == want


@pytest.mark.parametrize(
    "paths", [[], [b"/etc"], [b"mod/../x"], [b"../mod"], [b"mod/a/.."], [b"mod/a", b"other/b"]]
)
def test_paths_leaving_a_module_are_refused(paths):
    with pytest.raises(DaemonRefusal):
        module_name_of(paths)


@pytest.mark.parametrize(
    ("template", "user", "want"),
    [
        ("/k/%u", "alice", "/k/alice"),
        ("/k/%u/authorized_keys", "bob", "/k/bob/authorized_keys"),
        ("/k/all", "alice", "/k/all"),
        ("/k/100%%/%u", "alice", "/k/100%/alice"),
        ("/k/%u", "../root", None),
        ("/k/%u", "a/b", None),
        ("/k/%u", ".hidden", None),
        ("/k/%u", "", None),
        ("/k/%h", "alice", None),
    ],
)
def test_authorized_keys_path(template, user, want):
    got = authorized_keys_path(Path(template), user)
    assert (None if got is None else os.fspath(got)) == want


def test_host_key_is_made_once_mode_600_and_kept(tmp_path):
    path = tmp_path / "keys" / "host"
    first = ensure_host_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ensure_host_key(path)
    assert again.get_fingerprint() == first.get_fingerprint()
    path.chmod(0o644)
    with pytest.raises(Exception, match="readable by group or others"):
        ensure_host_key(path)


def test_authorized_keys_are_read_per_user(tmp_path):
    key = ensure_host_key(tmp_path / "k").convert_to_public()  # any key will do
    (tmp_path / "alice").write_bytes(b'from="10.0.0.0/8" ' + key.export_public_key())
    (tmp_path / "bob").write_bytes(key.export_public_key())
    alice = load_authorized_keys(tmp_path / "%u", "alice")
    bob = load_authorized_keys(tmp_path / "%u", "bob")
    assert alice.validate(key, "127.0.0.1", "127.0.0.1") is None  # from= excludes loopback
    assert alice.validate(key, "10.1.2.3", "10.1.2.3") is not None
    assert bob.validate(key, "127.0.0.1", "127.0.0.1") is not None
    assert load_authorized_keys(tmp_path / "%u", "carol") is None
    assert load_authorized_keys(None, "bob") is None


def _config(tmp_path, auth_users, secrets: str) -> DaemonConfig:
    path = tmp_path / "secrets"
    path.write_text(secrets)
    path.chmod(0o600)
    module = ModuleConfig(name="m", path=tmp_path, auth_users=auth_users, secrets_file=path)
    return DaemonConfig(modules={"m": module})


def test_password_from_the_secrets_file_of_a_module_admitting_the_user(tmp_path):
    cfg = _config(tmp_path, (AuthUser("alice"), AuthUser("eve", access="deny")), "alice:pw\neve:pw\nbob:pw\n")
    assert password_matches(cfg, "alice", "pw")
    assert not password_matches(cfg, "alice", "wrong")
    assert not password_matches(cfg, "eve", "pw")  # :deny
    assert not password_matches(cfg, "bob", "pw")  # in the file, not in auth users


def test_failed_logins_slow_down_per_address():
    now = [0.0]
    log = FailureLog(clock=lambda: now[0])
    assert log.delay_s("10.0.0.1") == 1.0
    for _ in range(3):
        log.record("10.0.0.1")
    assert log.delay_s("10.0.0.1") == 8.0
    assert log.delay_s("10.0.0.2") == 1.0
    now[0] = 61.0
    assert log.delay_s("10.0.0.1") == 1.0
