"""Keys and logins of the SSH transport: host key, authorized_keys, secrets-file passwords.

The SSH login name is the rsync auth user. A public key is accepted when the
user's OpenSSH ``authorized_keys`` file (``ssh authorized keys``, with
OpenSSH's ``%u`` token) lists it, ``from=`` patterns included (asyncssh
``SSHAuthorizedKeys.validate``); a password (``ssh password auth = yes``)
when a module whose ``auth users`` admit the user has it in its secrets
file, the same lines a daemon login checks (rsync authenticate.c
check_secret). Failed logins are counted per address and slow down the next
attempts (``FailureLog``), as on TCP.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import deque
from pathlib import Path

import asyncssh
from loguru import logger

from backupd.config.model import DaemonConfig
from backupd.config.secrets import read_secrets
from backupd.errors import ConfigError
from backupd.roles.session import match_auth_rule

HOST_KEY_NAME = "ssh_host_ed25519_key"
FAILURE_WINDOW_S = 60.0
BASE_DELAY_S = 1.0
MAX_DELAY_S = 8.0


def ensure_host_key(path: Path) -> asyncssh.SSHKey:
    """The server's host key at ``path``; an ed25519 key is made there (mode 600) if missing.

    Logs the key's SHA256 fingerprint, which clients see on first contact.

    Raises:
        ConfigError: the file exists but is not a private key, or is readable
            by group or others.
        OSError: it cannot be created.
    """
    path = Path(path)
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(key.export_private_key())
        Path(f"{path}.pub").write_bytes(key.export_public_key())
        logger.info("created SSH host key {}", path)
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"ssh host key {path}: readable by group or others (chmod 600 it)")
    try:
        key = asyncssh.read_private_key(path)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ConfigError(f"ssh host key {path}: {exc}") from None
    logger.info("SSH host key {} fingerprint {}", path, key.get_fingerprint("sha256"))
    return key


def authorized_keys_path(template: Path, user: str) -> Path | None:
    """The authorized_keys file of ``user``: ``template`` with ``%u`` -> user, ``%%`` -> ``%``.

    Returns:
        None for a name that could leave the folder (``/``, a leading ``.``,
        NUL, empty) or an unknown ``%`` token: such a login has no keys.
    """
    if not user or "/" in user or "\0" in user or user.startswith("."):
        return None
    text, out, i = os.fspath(template), [], 0
    while i < len(text):
        if text[i] != "%":
            out.append(text[i])
            i += 1
            continue
        token = text[i + 1 : i + 2]
        if token not in ("u", "%"):
            return None
        out.append(user if token == "u" else "%")
        i += 2
    return Path("".join(out))


def load_authorized_keys(template: Path | None, user: str) -> asyncssh.SSHAuthorizedKeys | None:
    """The parsed authorized_keys of ``user``, or None (no template, no file, unreadable, broken)."""
    path = authorized_keys_path(template, user) if template is not None else None
    if path is None:
        return None
    try:
        return asyncssh.read_authorized_keys(os.fspath(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        logger.warning("authorized keys {} for SSH user {!r}: {}", path, user, exc)
        return None


def password_matches(config: DaemonConfig, user: str, password: str) -> bool:
    """True if some module admitting ``user`` has ``password`` for it in its secrets file.

    The user's own line, or the ``@group:`` line of the group its rule matched
    (rsync authenticate.c check_secret); compared in constant time.
    """
    for module in config.modules.values():
        rule = match_auth_rule(module, user) if module.auth_users else None
        if rule is None or module.secrets_file is None:
            continue
        try:
            secrets = read_secrets(module.secrets_file, module.strict_modes)
        except (ConfigError, OSError) as exc:
            logger.error("secrets file of module {}: {}", module.name, exc)
            continue
        candidates = [] if user.startswith("@") else [secrets.get(user)]
        if rule[1] is not None:
            candidates.append(secrets.get("@" + rule[1]))
        for stored in candidates:
            if stored is not None and hmac.compare_digest(stored.encode(), password.encode()):
                return True
    return False


class FailureLog:
    """Failed SSH logins per client address over the last minute -> the delay before refusing.

    1 s, doubling per recent failure, at most 8 s (as tcp.auth_fail_delay).
    """

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._times: dict[str, deque[float]] = {}

    def record(self, addr: str) -> None:
        """Count one failed login from ``addr``."""
        self._times.setdefault(addr, deque(maxlen=64)).append(self.clock())

    def recent(self, addr: str) -> int:
        """Failures from ``addr`` within FAILURE_WINDOW_S."""
        times = self._times.get(addr)
        horizon = self.clock() - FAILURE_WINDOW_S
        while times and times[0] < horizon:
            times.popleft()
        if times is not None and not times:
            del self._times[addr]
        return len(times or ())

    def delay_s(self, addr: str) -> float:
        """Seconds to wait before answering the next failed attempt from ``addr``."""
        return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** min(self.recent(addr), 8))


CLIENT_KEY_NAME = "ssh_client_ed25519"


def ensure_client_key(base: Path, host_key: asyncssh.SSHKey, host: str | None, port: int, user: str = "backup") -> str:
    """The embedded default's client side: a key pair, its authorized_keys entry, a known_hosts line.

    Made once under ``base`` (``ssh_client_ed25519`` mode 600 and ``.pub``;
    ``authorized_keys/<user>`` gets the public key if missing); ``known_hosts``
    is rewritten for this host key, host and port on every start.

    Returns:
        The exact push command to print, ``rsync -a -e 'ssh -p PORT -i KEY -o
        UserKnownHostsFile=FILE' ./yourdir/ backup@HOST:backup/``.

    Raises:
        OSError: a file cannot be written.
    """
    import shlex

    key_path = base / CLIENT_KEY_NAME
    if not key_path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{user}@backupd")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        Path(f"{key_path}.pub").write_bytes(key.export_public_key())
    public = Path(f"{key_path}.pub").read_bytes().strip()
    keys_dir = base / "authorized_keys"
    keys_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = keys_dir / user
    lines = authorized.read_bytes().splitlines() if authorized.exists() else []
    if public not in lines:
        authorized.write_bytes(b"".join(line + b"\n" for line in [*lines, public]))
    shown_host = host if host and host not in ("0.0.0.0", "::") else "127.0.0.1"
    known = base / "known_hosts"
    known.write_bytes(f"[{shown_host}]:{port} ".encode() + host_key.export_public_key("openssh").split(b" ")[0]
                      + b" " + host_key.export_public_key("openssh").split(b" ")[1].strip() + b"\n")
    ssh = f"ssh -p {port} -i {shlex.quote(os.fspath(key_path))} -o UserKnownHostsFile={shlex.quote(os.fspath(known))}"
    return f"rsync -a -e {shlex.quote(ssh)} ./yourdir/ {user}@{shown_host}:backup/"
