"""The rsyncd secrets file: ``user:password`` and ``@group:password`` lines.

Format (rsyncd.conf(5) "secrets file", rsync authenticate.c check_secret()):
one entry per line; a line whose very first character is ``#`` is a comment;
the name is everything before the first ``:``, the password everything after
it up to the end of the line (it may contain ``:``); nothing is trimmed. For
each name the first line counts: rsyncd stops looking for a name after its
first line whose password does not match.

``strict modes`` (rsyncd.conf(5), check_secret()): the file is refused if
"other" may read or write it (``st_mode & 0o006``; group bits and other-execute
are not looked at), or, when the daemon runs as root, if root does not own it.
Like rsync's open_no_attacker_symlinks(), a symlink is only followed when it is
owned by root or by us.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from backupd.errors import ConfigError

MAX_SECRETS_BYTES = 1 << 20  # a secrets file larger than 1 MiB is refused, not read


class SecretsError(ConfigError):
    """The secrets file is missing, unreadable, or refused by ``strict modes``."""


def read_secrets(path: Path, strict_modes: bool) -> dict[str, str]:
    """Read a secrets file into ``{name: password}``; groups keep their ``@``.

    Args:
        path: the module's ``secrets file``.
        strict_modes: the module's ``strict modes`` setting.

    Returns:
        The first password of each name; ``"@staff"`` keys are group
        passwords. Undecodable bytes are kept as surrogate escapes, so
        ``password.encode("utf-8", "surrogateescape")`` gives the file's bytes.

    Raises:
        SecretsError: the file cannot be opened, is not a regular file, is
            larger than MAX_SECRETS_BYTES, or fails the strict-modes check.
    """
    data = _read_checked(Path(path), strict_modes)
    secrets: dict[str, str] = {}
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        line = line.rstrip("\r")
        name, colon, password = line.partition(":")
        if not colon or not name or name.startswith("#") or name == "@":
            continue
        secrets.setdefault(name, password)
    return secrets


def _read_checked(path: Path, strict_modes: bool) -> bytes:
    """Open ``path`` (refusing foreign symlinks), check its mode, read it all."""
    try:
        link = os.lstat(path)
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
            raise SecretsError(f"{path}: secrets file is a symlink owned by uid {link.st_uid}")
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretsError(f"{path}: cannot open secrets file: {exc.strerror}") from None
    try:
        # the opened inode, not the name: no swap between check and read
        check_secrets_mode(path, os.fstat(fd), strict_modes)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_SECRETS_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRETS_BYTES:
        raise SecretsError(f"{path}: secrets file larger than {MAX_SECRETS_BYTES} bytes")
    return data


def check_secrets_mode(path: Path, st: os.stat_result, strict_modes: bool) -> None:
    """Apply the ``strict modes`` rules to the stat of an opened secrets file.

    Raises:
        SecretsError: not a regular file; with ``strict_modes``, other-readable
            or other-writable, or not owned by root while we run as root.
    """
    if not stat.S_ISREG(st.st_mode):
        raise SecretsError(f"{path}: secrets file is not a regular file")
    if not strict_modes:
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o006:
        raise SecretsError(
            f"{path}: secrets file must not be other-accessible (mode {mode:04o}; "
            "chmod 600 it, or see 'strict modes')"
        )
    if os.getuid() == 0 and st.st_uid != 0:
        raise SecretsError(
            f"{path}: secrets file must be owned by root when running as root "
            f"(owner uid {st.st_uid}; see 'strict modes')"
        )


def lookup_password(
    secrets: Mapping[str, str], user: str, groups: Iterable[str] = ()
) -> tuple[str, ...]:
    """The passwords that may authenticate ``user``; any one of them is enough.

    Source: rsync authenticate.c check_secret(): the user's own line, and the
    line of the ``@group`` whose ``auth users`` rule admitted the user.

    Args:
        secrets: from ``read_secrets``.
        user: the name the client sent.
        groups: group names (without ``@``) through which a rule matched.

    Returns:
        Candidate passwords, the user's first; empty if none (or if the user
        name starts with ``#`` or ``@``, which could only match comments or
        group lines).
    """
    found: list[str] = []
    if user and user[0] not in "#@" and user in secrets:
        found.append(secrets[user])
    for group in groups:
        password = secrets.get(f"@{group}")
        if password is not None and password not in found:
            found.append(password)
    return tuple(found)
