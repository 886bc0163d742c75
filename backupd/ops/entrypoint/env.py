"""The container entrypoint's vocabulary: its variables, the plan it makes, the environment reader."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backupd.errors import BackupdError, ConfigError

EX_CONFIG = 78
DEFAULT_CONFIG_DIR = Path("/etc/backupd")
DEFAULT_STATE_DIR = Path("/var/lib/backupd/pusher")
DEFAULT_METRICS = "0.0.0.0:9873"
DEFAULT_RUN_AS = {"rsyncd": "backupd", "sersync": "root"}
SERSYNC_LEGACY_CONF = Path("/usr/local/sersync/etc/sersync.conf")  # the script pusher's image
RENDERED_HEADER = "# Rendered by the backupd entrypoint from the environment at each start.\n"
OFF_WORDS = ("", "0", "no", "false", "off", "none")
ON_WORDS = ("1", "yes", "true", "on")

RSYNCD_VARS = {  # name: (default, meaning)
    "RSYNCD_USER": ("rsync", "the user clients log in as"),
    "RSYNCD_PASSWD": ("(generated once)", "its password"),
    "RSYNCD_MOD_NAME": ("data", "the module name"),
    "RSYNCD_PATH": ("/data", "the module directory (must exist: mount a volume)"),
    "RSYNCD_PORT": ("873", "TCP port"),
    "RSYNCD_ADDRESS": ("0.0.0.0", "listen address"),
    "RSYNCD_MAX_CONN": ("300", "max connections (0 = no limit)"),
    "RSYNCD_HOSTS_ALLOW": ("0.0.0.0/0", "hosts allow (addresses, CIDR, wildcards)"),
    "RSYNCD_TRANSFER_LOGGING": ("no", "log one line per file"),
    "RSYNCD_LOG_FORMAT": ("%o %h [%a] %m (%u) %f %l", "its log format"),
    "RSYNCD_LOG_FILE": ("(stderr)", "log file"),
    "RSYNCD_SSH_PORT": ("0", "SSH port for rsync -e ssh (0 = off)"),
    "RSYNCD_SSH_KEYS": ("/etc/backupd/authorized_keys/%u", "OpenSSH authorized_keys per user (%u): mount them"),
    "KEEP_HISTORY_BACKUP_DAYS": ("7", "history retention in days (0 = forever)"),
}
SERSYNC_VARS = {
    "LISTEN_DIR": ("(required)", "sources: '[alias=]/dir ...' (shell words)"),
    "PUSH_TARGETS": (
        "",
        "target URLs rsync://user@host[:port]/module[/dir] (instead of RSYNCD_IP)",
    ),
    "RSYNCD_IP": ("(required without PUSH_TARGETS)", "target hosts 'host[:port],...' (replicas)"),
    "RSYNCD_MOD_NAME": ("data", "module on the targets"),
    "RSYNCD_PORT": ("873", "port of targets given without one"),
    "RSYNCD_USER": ("rsync", "user on the targets"),
    "RSYNCD_PASSWD": ("", "password on the targets (or RSYNC_PASSWD_FILE)"),
    "RSYNC_PASSWD_FILE": ("", "a mounted password file"),
    "REAL_TIME_SYNC_ENABLE": ("1", "watch with inotify (0: full syncs only)"),
    "REAL_TIME_SYNC_DELAY": ("5", "seconds of the coalescing window"),
    "FULL_RSYNC_FIRST_ENABLE": ("1", "a full sync at start"),
    "FULL_RSYNC_ENABLE": ("0", "scheduled full syncs, every"),
    "FULL_RSYNC_INTERVAL": ("3", "days (or 12h, 90m)"),
    "FULL_RSYNC_TIMEOUT": ("12", "hours per full sync (or 30m)"),
    "RSYNC_TIMEOUT": ("180", "rsync --timeout seconds"),
    "RSYNC_BWLIMIT": ("", "rsync --bwlimit (50M)"),
    "EXTRA_RSYNC_ARGS": ("", "more rsync arguments"),
    "PUSH_EXCLUDE": ("", "exclude rules for every source (globs, re:REGEX)"),
    "PRE_SYNC_COMMAND": ("", "command run before each full sync"),
    "HA_DSN": ("", "PostgreSQL DSN: elect one leader among pushers"),
    "BACKUPD_STATE_DIR": (str(DEFAULT_STATE_DIR), "queues and states"),
}
COMMON_VARS = {
    "RUN_MODE": ("sersync if a sersync.conf is mounted, else rsyncd", "rsyncd or sersync"),
    "SERSYNC_CONF_PATH": (str(SERSYNC_LEGACY_CONF), "where the seed image's sersync.conf is mounted"),
    "USE_CONF_FILE": ("0", "1: use the mounted config as is; or its path"),
    "BACKUPD_CONFIG_DIR": (str(DEFAULT_CONFIG_DIR), "where config and secrets go"),
    "RUN_AS": ("rsyncd: backupd, sersync: root", "user to run as (name or uid[:gid])"),
    "METRICS_ADDRESS": (DEFAULT_METRICS, "Prometheus endpoint HOST:PORT; empty = off"),
    "LOG_JSON": ("0", "1: JSON log lines"),
}


class EntrypointError(BackupdError):
    """The environment is wrong; the message lists every problem, one per line."""


@dataclass(frozen=True)
class RenderedFile:
    """A file the entrypoint writes: ``text`` with ``mode``; secrets are redacted in ``plan``."""

    path: Path
    text: str
    mode: int = 0o600
    secret: bool = False


@dataclass(frozen=True)
class Plan:
    """What the entrypoint does: write ``files``, print ``notices`` once, exec ``argv``."""

    mode: str
    argv: tuple[str, ...]
    config_path: Path
    files: tuple[RenderedFile, ...] = ()
    dirs: tuple[Path, ...] = ()
    owner: tuple[int, int] | None = None  # chown the written files (RUN_AS)
    notices: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostFacts:
    """What the plan needs to know about the machine (faked in tests)."""

    euid: int
    unprivileged_port_start: int = 1024

    @classmethod
    def current(cls) -> HostFacts:
        """This process and /proc/sys/net/ipv4/ip_unprivileged_port_start."""
        try:
            start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
        except (OSError, ValueError):
            start = 1024
        return cls(euid=os.geteuid(), unprivileged_port_start=start)


@dataclass
class _Env:
    """Typed reads of the environment; problems pile up in ``errors``."""

    env: Mapping[str, str]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self, name: str, default: str = "") -> str:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return default
        if "\n" in value or "\0" in value:
            self.errors.append(f"{name}: must be one line")
            return default
        return value.strip()

    def given(self, name: str) -> bool:
        return bool(self.env.get(name, "").strip())

    def number(self, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = self.text(name, str(default))
        if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            self.errors.append(f"{name}={raw!r}: expected a whole number {bound}")
            return default
        return int(raw)

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name, "").lower()
        if not raw:
            return default
        if raw in ON_WORDS or raw in OFF_WORDS:
            return raw in ON_WORDS
        self.errors.append(f"{name}={raw!r}: expected 1/0, yes/no or true/false")
        return default

    def abs_dir(self, name: str, value: str, must_exist: bool = True) -> Path:
        path = Path(value)
        if not path.is_absolute():
            self.errors.append(f"{name}={value!r}: expected an absolute path")
        elif must_exist and not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            self.errors.append(f"{name}={value!r}: {what} (mount a volume there)")
        return path

    def word(self, name: str, default: str, forbidden: str) -> str:
        value = self.text(name, default)
        bad = sorted({c for c in value if c in forbidden or c.isspace()})
        if bad:
            self.errors.append(f"{name}={value!r}: must not contain {' '.join(map(repr, bad))}")
        return value


def legacy_sersync_conf(env: Mapping[str, str]) -> Path:
    """Where the seed image's sersync.conf is mounted (``SERSYNC_CONF_PATH``, default the seed's path)."""
    return Path(env.get("SERSYNC_CONF_PATH", "").strip() or SERSYNC_LEGACY_CONF)


def _backupd(*args: str) -> list[str]:
    return [sys.executable, "-m", "backupd", *args]


def _drop_prefix(run_as: tuple[int, int] | None, port: int | None, host: HostFacts) -> list[str]:
    """``setpriv`` argv that switches to ``run_as`` (keeping only the right to bind ``port``)."""
    if run_as is None:
        return []
    uid, gid = run_as
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    if port is not None and port < host.unprivileged_port_start:
        prefix += ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    return [*prefix, "--"]


def _use_conf_file(e: _Env, candidates: list[Path]) -> Path | None:
    """The mounted config to use as is, or None to render one (USE_CONF_FILE)."""
    raw = e.text("USE_CONF_FILE", "0")
    if raw.lower() in OFF_WORDS:
        return None
    if raw.startswith("/"):
        candidates = [Path(raw)]
    elif raw.lower() not in ON_WORDS:
        e.errors.append(f"USE_CONF_FILE={raw!r}: expected 0, 1 or the config's absolute path")
        return None
    for path in candidates:
        if path.is_file():
            return path
    e.errors.append(f"USE_CONF_FILE={raw}: no config found at {' or '.join(map(str, candidates))}")
    return None


def _check_loads(e: _Env, load, path: Path, text: str | None = None):
    """``load(path, text)``'s result, or None with its ConfigError (file:line) recorded."""
    try:
        return load(path, text)
    except ConfigError as exc:
        e.errors.append(f"config: {exc}")
        return None


