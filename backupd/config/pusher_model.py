"""Frozen configuration model of the pusher (``backupd watch`` / ``backupd push``).

Filled by ``pusher_yaml.py`` (YAML) and ``sersync_conf.py`` (the shell-variable
file of the inotify+rsync script pusher); both readers give equal objects for
equal settings (``source`` and ``warnings`` do not take part in ``==``).
Durations carry their unit in the name (design.md §2, style.md §2).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from backupd.errors import ConfigError

RSYNC_PORT = 873
SSH_PORT = 22
_URL = re.compile(r"^rsync://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?/(?P<rest>.*)$")


@dataclass(frozen=True)
class Target:
    """One backupd server (or rsyncd) a source pushes to: a module and a subdir in it.

    Written ``rsync://user@host:port/module/subdir``; several targets of one
    source are replicas, each with its own durable queue.
    """

    host: str
    module: str
    path: str = ""  # subdir inside the module, no leading or trailing "/"
    port: int = RSYNC_PORT
    user: str | None = None
    password_file: Path | None = None
    # "ssh": push with ``rsync -e 'ssh -p PORT [-i identity_file]' SRC user@host:module/path``
    # (backupd's SSH transport); ``port`` is then the SSH port
    transport: str = "rsync"
    identity_file: Path | None = None
    known_hosts: Path | None = None  # ssh: the server's host key (else the user's ~/.ssh/known_hosts)

    @property
    def url(self) -> str:
        """``rsync://[user@]host[:port]/module[/path]`` (port shown when not 873)."""
        who = f"{quote(self.user, safe='')}@" if self.user else ""
        port = f":{self.port}" if self.port != RSYNC_PORT else ""
        tail = f"/{self.path}" if self.path else ""
        return f"rsync://{who}{self.host}{port}/{self.module}{tail}"

    def dest(self, remote_subdir: str = "") -> str:
        """The rsync destination argument for a source, with a trailing ``/``."""
        parts = [p for p in (self.path, remote_subdir.strip("/")) if p]
        tail = "".join(f"/{p}" for p in parts)
        who = f"{self.user}@" if self.user else ""
        if self.transport == "ssh":
            return f"{who}{self.host}:{self.module}{tail}/"
        return f"rsync://{who}{self.host}:{self.port}/{self.module}{tail}/"

    def rsh(self) -> str | None:
        """The ``-e`` remote shell of an SSH target (BatchMode: never a prompt), else None."""
        if self.transport != "ssh":
            return None
        identity = f" -i {shlex.quote(str(self.identity_file))}" if self.identity_file is not None else ""
        known = f" -o UserKnownHostsFile={shlex.quote(str(self.known_hosts))}" if self.known_hosts else ""
        return f"ssh -p {self.port}{identity}{known} -o BatchMode=yes"


def parse_target_url(
    url: str, password_file: Path | None = None, where: str = "", *, transport: str = "rsync",
    identity_file: Path | None = None, known_hosts: Path | None = None,
) -> Target:
    """Parse ``rsync://[user@]host[:port]/module[/subdir]`` into a :class:`Target`.

    With ``transport="ssh"`` the port is the SSH port (22 when the URL has
    none) and the push goes over ``rsync -e ssh``.

    Raises:
        ConfigError: not an rsync:// URL, no module named, or an unknown
            transport (``where`` prefixes it).
    """
    if transport not in ("rsync", "ssh"):
        raise ConfigError(f"{where}target {url!r}: transport {transport!r} is not 'rsync' or 'ssh'")
    match = _URL.match(url.strip())
    rest = match["rest"].strip("/") if match else ""
    if not match or not rest:
        raise ConfigError(f"{where}target {url!r}: expected rsync://[user@]host[:port]/module[/subdir]")
    module, _, path = rest.partition("/")
    user = unquote(match["user"]) if match["user"] else None
    port = int(match["port"]) if match["port"] else (SSH_PORT if transport == "ssh" else RSYNC_PORT)
    if not 0 < port < 65536:
        raise ConfigError(f"{where}target {url!r}: port {port} outside 1..65535")
    if transport == "ssh":
        password_file = None  # rsync: "--password-file ... may only be used when accessing an rsync daemon"
    return Target(match["host"], module, path.strip("/"), port, user, password_file, transport, identity_file,
                  known_hosts)


@dataclass(frozen=True)
class SourceConfig:
    """One watched directory and where it goes.

    ``exclude`` applies everywhere (events, batches, full syncs); ``watch_exclude``
    only to inotify events, as sersync.conf's ``exclude_file_rule`` (a full
    sync still copies those paths). A rule is a glob (no ``/``: matches a name
    at any depth; with ``/``: the path from the source root) or ``re:REGEX``,
    searched in the relative path. ``remote_subdir`` is the alias the source
    gets under each target.
    """

    path: Path
    targets: tuple[Target, ...] = ()
    remote_subdir: str = ""
    exclude: tuple[str, ...] = ()
    watch_exclude: tuple[str, ...] = ()
    pre_sync_command: str | None = None


@dataclass(frozen=True)
class HaConfig:
    """Leader election through PostgreSQL: a lease row per ``group``.

    ``lease_s`` is how long a lease lasts without renewal: a dead leader is
    replaced within about that time. ``node_id`` names this pusher (default:
    the host name).
    """

    dsn: str
    node_id: str
    group: str = "default"
    lease_s: float = 15.0


@dataclass(frozen=True)
class PusherConfig:
    """The whole pusher: sources, timing, rsync options, HA and metrics."""

    sources: tuple[SourceConfig, ...]
    state_dir: Path
    delay_s: float = 5.0
    realtime: bool = True
    full_sync_at_start: bool = True
    full_sync_interval_s: float | None = None
    full_sync_timeout_s: float | None = None
    rsync_binary: str = "rsync"
    rsync_timeout_s: int = 600
    bwlimit: str | None = None
    extra_args: tuple[str, ...] = ()
    max_pending: int = 100_000
    retry_min_s: float = 1.0
    retry_max_s: float = 300.0
    ha: HaConfig | None = None
    metrics_address: str = "127.0.0.1"
    metrics_port: int | None = None
    logs_dir: Path | None = None  # the per-target rsync logs (sersync.conf logs_dir); None: state_dir
    source: Path | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)


def run_logs_dir(config: PusherConfig) -> Path:
    """Where the per-target rsync logs go: ``logs_dir``, else ``state_dir``."""
    return config.logs_dir if config.logs_dir is not None else config.state_dir


def target_key(source: SourceConfig, target: Target) -> str:
    """A stable file-name-safe id of one (source, target) pair: ``module-<12 hex>``."""
    ident = f"{source.path}\0{target.url}\0{source.remote_subdir}".encode()
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", target.module)[:32]
    return f"{slug}-{hashlib.sha1(ident).hexdigest()[:12]}"


def validate_pusher(config: PusherConfig, where: str) -> PusherConfig:
    """Check the cross-field rules every reader shares; return ``config``.

    Raises:
        ConfigError: no source, a source without targets, a relative source
            path, two sources on one directory, or a bad timing value.
    """
    if not config.sources:
        raise ConfigError(f"{where}: no source directory configured")
    seen: set[Path] = set()
    for src in config.sources:
        if not src.path.is_absolute():
            raise ConfigError(f"{where}: source path {src.path} is not absolute")
        if src.path in seen:
            raise ConfigError(f"{where}: source {src.path} configured twice")
        seen.add(src.path)
        if not src.targets:
            raise ConfigError(f"{where}: source {src.path} has no target")
    if config.delay_s < 0 or config.retry_min_s <= 0 or config.retry_max_s < config.retry_min_s:
        raise ConfigError(f"{where}: delay and retry times must be positive, min <= max")
    if config.max_pending < 1:
        raise ConfigError(f"{where}: max_pending must be at least 1")
    return config


# rsync options that skip same-size and shrinking edits: full syncs drop them (pusher.targets.full_sync_argv)
APPEND_ARGS = ("--append", "--append-verify")
