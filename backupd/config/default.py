"""The embedded default used by ``backupd serve`` without ``--config``.

One writable module ``backup`` at ``<base_dir>/backup``, listening on
127.0.0.1:8730 (unprivileged), user ``backup`` with a random password made
once and kept in ``<base_dir>/secrets`` (``backup:<password>``, mode 600) and
``<base_dir>/password`` (the password alone, mode 600, for ``rsync
--password-file``). Later starts reuse the password from the secrets file.
Sessions run as the user who started the server (the module's ``uid``/``gid``
are its ids), since the folders are that user's.
"""

from __future__ import annotations

import os
import secrets as token_source
import shlex
from dataclasses import dataclass
from pathlib import Path

from backupd.config.model import AuthUser, DaemonConfig, ModuleConfig
from backupd.config.secrets import SecretsError, read_secrets
from backupd.errors import ConfigError

DEFAULT_BASE_DIR = Path("backupd-data")
DEFAULT_PORT = 8730
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_MODULE = "backup"
DEFAULT_USER = "backup"
DEFAULT_KEEP_DAYS = 7
RSYNCD_PORT = 873  # left out of rsync:// URLs


@dataclass(frozen=True)
class DefaultCredentials:
    """The default module's login.

    ``created`` is True on the start that made the password (print it then).
    """

    user: str
    password: str
    secrets_path: Path
    password_file: Path
    created: bool


def embedded_default(base_dir: Path = DEFAULT_BASE_DIR) -> tuple[DaemonConfig, DefaultCredentials]:
    """Build the default configuration, creating its folders and password once.

    Args:
        base_dir: where the module, ``secrets`` and ``password`` live;
            relative to the current directory unless absolute.

    Returns:
        The configuration and the credentials a client pushes with.

    Raises:
        SecretsError: an existing secrets file is refused by strict modes or
            has no ``backup:`` line.
        OSError: the folders or files cannot be created.
    """
    base = Path(base_dir).absolute()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    (base / DEFAULT_MODULE).mkdir(mode=0o755, exist_ok=True)
    secrets_path, password_file = base / "secrets", base / "password"
    password, created = _ensure_password(secrets_path)
    _write_private(password_file, f"{password}\n", replace=True)
    creds = DefaultCredentials(DEFAULT_USER, password, secrets_path, password_file, created)
    return _default_config(base), creds


def existing_default(base_dir: Path = DEFAULT_BASE_DIR) -> DaemonConfig:
    """The default configuration of an earlier ``backupd serve``, creating nothing.

    For the commands that only read (``history ls``, ``restore``, ``prune``):
    they must not make a new module and password where there was none.

    Raises:
        ConfigError: ``<base_dir>/backup`` does not exist; the message says
            what was looked for and how to name a configuration instead.
    """
    base = Path(base_dir).absolute()
    if not (base / DEFAULT_MODULE).is_dir():
        raise ConfigError(
            f"no --config given and no embedded default at {base / DEFAULT_MODULE} "
            f"(made by 'backupd serve' in {base.parent}); pass --config FILE or --data-dir DIR"
        )
    return _default_config(base)


def _default_config(base: Path) -> DaemonConfig:
    module = ModuleConfig(
        name=DEFAULT_MODULE,
        path=base / DEFAULT_MODULE,
        comment="backupd default module",
        read_only=False,
        auth_users=(AuthUser(DEFAULT_USER),),
        secrets_file=base / "secrets",
        history=True,
        history_keep_days=DEFAULT_KEEP_DAYS,
        catalog_dir=base / "state",
        uid=str(os.getuid()),  # the folder's owner: a root server would otherwise run it as nobody
        gid=str(os.getgid()),
    )
    return DaemonConfig(modules={DEFAULT_MODULE: module}, port=DEFAULT_PORT, address=DEFAULT_ADDRESS)


def _ensure_password(secrets_path: Path) -> tuple[str, bool]:
    """The ``backup`` password from the secrets file, creating it if absent.

    Returns:
        ``(password, created)``.
    """
    if not secrets_path.exists():
        password = token_source.token_urlsafe(24)
        if _write_private(secrets_path, f"{DEFAULT_USER}:{password}\n", replace=False):
            return password, True
    stored = read_secrets(secrets_path, strict_modes=True).get(DEFAULT_USER)
    if not stored:
        raise SecretsError(f"{secrets_path}: no '{DEFAULT_USER}:' line in the secrets file")
    return stored, False


def _write_private(path: Path, text: str, replace: bool) -> bool:
    """Write ``text`` to ``path`` with mode 600, all at once (temp file + link).

    Args:
        path: the file to write.
        text: its whole content.
        replace: overwrite an existing ``path``; if False and ``path`` exists
            (another process was first), leave it alone.

    Returns:
        True if this call wrote ``path``.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{token_source.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # exact, whatever the umask
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def push_command_hint(
    cfg: DaemonConfig, creds: DefaultCredentials, *, port: int | None = None, address: str | None = None
) -> str:
    """The rsync commands that push a folder to the default module, two forms.

    The first reads the password from ``creds.password_file`` (kept out of the
    shell history); the second passes it in ``RSYNC_PASSWORD``. ``port`` and
    ``address`` override the config's (``serve --port/--address``).
    """
    module = DEFAULT_MODULE if DEFAULT_MODULE in cfg.modules else next(iter(cfg.modules))
    url = rsync_url(address or cfg.address, port if port is not None else cfg.port, creds.user, module)
    password_file = shlex.quote(str(creds.password_file))
    return "\n".join(
        (
            f"rsync -a --password-file={password_file} ./yourdir/ {url}",
            f"RSYNC_PASSWORD={shlex.quote(creds.password)} rsync -a ./yourdir/ {url}",
        )
    )


def rsync_url(address: str | None, port: int, user: str, module: str) -> str:
    """``rsync://user@host[:port]/module/``; a wildcard address becomes 127.0.0.1."""
    host = address if address and address not in ("0.0.0.0", "::") else DEFAULT_ADDRESS
    if ":" in host:
        host = f"[{host}]"
    port_part = "" if port == RSYNCD_PORT else f":{port}"
    return f"rsync://{user}@{host}{port_part}/{module}/"
