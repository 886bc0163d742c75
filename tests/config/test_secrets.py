import os
from pathlib import Path

import pytest

from backupd.config.secrets import SecretsError, lookup_password, read_secrets
from backupd.errors import ConfigError

AS_ROOT = os.geteuid() == 0
OTHER_UID = 4242


def _secrets(tmp_path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "rsyncd.secrets"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)
    return path


def test_parse_lines(tmp_path):
    path = _secrets(
        tmp_path,
        "# comment:line\n"
        "alice:s3cret\n"
        "bob:pa:ss:word\r\n"
        "\n"
        "no colon here\n"
        "@staff:grouppw\n"
        "alice:second-ignored\n"
        " carol:leading-blank-is-part-of-the-name\n"
        "dave:\n",
    )
    assert read_secrets(path, strict_modes=True) == {
        "alice": "s3cret",
        "bob": "pa:ss:word",
        "@staff": "grouppw",
        " carol": "leading-blank-is-part-of-the-name",
        "dave": "",
    }


def test_undecodable_bytes_round_trip(tmp_path):
    path = _secrets(tmp_path, b"eve:caf\xe9\n")
    password = read_secrets(path, strict_modes=True)["eve"]
    assert password.encode("utf-8", "surrogateescape") == b"caf\xe9"


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o660, 0o601, 0o700])
def test_strict_modes_accepts_no_other_read_write(tmp_path, mode):
    path = _secrets(tmp_path, "alice:pw\n", mode)
    assert read_secrets(path, strict_modes=True) == {"alice": "pw"}


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o606, 0o666, 0o777])
def test_strict_modes_refuses_other_access(tmp_path, mode):
    path = _secrets(tmp_path, "alice:pw\n", mode)
    with pytest.raises(SecretsError, match=f"other-accessible \\(mode {mode:04o}"):
        read_secrets(path, strict_modes=True)
    assert read_secrets(path, strict_modes=False) == {"alice": "pw"}


@pytest.mark.skipif(not AS_ROOT, reason="the owner rule applies when running as root")
def test_root_requires_root_owned_file(tmp_path):
    path = _secrets(tmp_path, "alice:pw\n")
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(SecretsError, match="owned by root"):
        read_secrets(path, strict_modes=True)
    assert read_secrets(path, strict_modes=False) == {"alice": "pw"}


@pytest.mark.skipif(not AS_ROOT, reason="needs to chown a symlink")
def test_foreign_symlink_refused_own_symlink_followed(tmp_path):
    target = _secrets(tmp_path, "alice:pw\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_secrets(link, strict_modes=True) == {"alice": "pw"}
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(SecretsError, match="symlink owned by uid 4242"):
        read_secrets(link, strict_modes=False)


def test_missing_or_not_regular_is_secrets_error(tmp_path):
    with pytest.raises(SecretsError, match="cannot open secrets file") as info:
        read_secrets(tmp_path / "nope", strict_modes=True)
    assert isinstance(info.value, ConfigError)
    os.chmod(tmp_path, 0o700)
    with pytest.raises(SecretsError, match="not a regular file"):
        read_secrets(tmp_path, strict_modes=False)


def test_lookup_password():
    secrets = {"alice": "a", "@staff": "s", "@ops": "o", "#x": "c", "bob": "s"}
    assert lookup_password(secrets, "alice") == ("a",)
    assert lookup_password(secrets, "alice", ["staff"]) == ("a", "s")
    assert lookup_password(secrets, "carol", ["staff", "ops", "none"]) == ("s", "o")
    assert lookup_password(secrets, "bob", ["staff"]) == ("s",)
    assert lookup_password(secrets, "carol") == ()
    assert lookup_password(secrets, "@staff") == ()  # a user name never reads a group line
    assert lookup_password(secrets, "#x") == ()
