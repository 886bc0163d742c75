import os
import shlex
import stat
from pathlib import Path

import pytest

from backupd.config.default import embedded_default, push_command_hint, rsync_url
from backupd.config.model import AuthUser
from backupd.config.secrets import SecretsError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_password_mode_600(tmp_path):
    base = tmp_path / "data"
    cfg, creds = embedded_default(base)
    assert creds.created is True and creds.user == "backup"
    assert len(creds.password) >= 20
    assert creds.secrets_path == base / "secrets"
    assert creds.secrets_path.read_text() == f"backup:{creds.password}\n"
    assert creds.password_file.read_text() == f"{creds.password}\n"
    assert _mode(creds.secrets_path) == 0o600 and _mode(creds.password_file) == 0o600
    assert (cfg.port, cfg.address) == (8730, "127.0.0.1")
    assert cfg.port > 1024
    module = cfg.modules["backup"]
    assert list(cfg.modules) == ["backup"]
    assert module.path == base / "backup" and module.path.is_dir()
    assert module.read_only is False
    assert module.auth_users == (AuthUser("backup"),)
    assert module.secrets_file == base / "secrets"
    assert module.history is True and module.history_keep_days == 7
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no temp files left


def test_later_start_reuses_password(tmp_path):
    _, first = embedded_default(tmp_path)
    _, again = embedded_default(tmp_path)
    assert again.created is False
    assert again.password == first.password
    first.password_file.unlink()  # a lost password file is written again
    _, third = embedded_default(tmp_path)
    assert third.password_file.read_text() == f"{first.password}\n"


def test_two_data_dirs_get_different_passwords(tmp_path):
    _, a = embedded_default(tmp_path / "a")
    _, b = embedded_default(tmp_path / "b")
    assert a.password != b.password


def test_mode_600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        _, creds = embedded_default(tmp_path)
    finally:
        os.umask(old)
    assert _mode(creds.secrets_path) == 0o600 and _mode(creds.password_file) == 0o600


def test_relative_base_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, creds = embedded_default()
    assert cfg.modules["backup"].path == tmp_path / "backupd-data" / "backup"
    assert creds.secrets_path.is_absolute()


def test_loose_secrets_file_is_refused(tmp_path):
    _, creds = embedded_default(tmp_path)
    os.chmod(creds.secrets_path, 0o644)
    with pytest.raises(SecretsError, match="other-accessible"):
        embedded_default(tmp_path)


def test_secrets_without_backup_line_is_refused(tmp_path):
    (tmp_path / "secrets").write_text("someone:else\n")
    os.chmod(tmp_path / "secrets", 0o600)
    with pytest.raises(SecretsError, match="no 'backup:' line"):
        embedded_default(tmp_path)


def test_push_command_hint(tmp_path):
    cfg, creds = embedded_default(tmp_path / "with space")
    first, second = push_command_hint(cfg, creds).splitlines()
    url = "rsync://backup@127.0.0.1:8730/backup/"
    assert shlex.split(first) == [
        "rsync",
        "-a",
        f"--password-file={creds.password_file}",
        "./yourdir/",
        url,
    ]
    env, *argv = shlex.split(second)
    assert env == f"RSYNC_PASSWORD={creds.password}"
    assert argv == ["rsync", "-a", "./yourdir/", url]


@pytest.mark.parametrize(
    ("address", "port", "url"),
    [
        ("127.0.0.1", 8730, "rsync://u@127.0.0.1:8730/m/"),
        ("192.0.2.7", 873, "rsync://u@192.0.2.7/m/"),
        ("::1", 8730, "rsync://u@[::1]:8730/m/"),
        (None, 8730, "rsync://u@127.0.0.1:8730/m/"),
        ("0.0.0.0", 8730, "rsync://u@127.0.0.1:8730/m/"),
    ],
)
def test_rsync_url(address, port, url):
    assert rsync_url(address, port, "u", "m") == url
