"""The container entrypoint: environment -> rendered config + secrets -> the argv it execs.

All decisions are in ``plan_from_env`` (no writes, no exec), so they are
tested without Docker; ``apply_plan`` writes the files, ``main`` execs.
``container/entrypoint.sh`` only runs ``python -m backupd.ops.entrypoint``.

``RUN_MODE=rsyncd`` renders ``$BACKUPD_CONFIG_DIR/backupd.yaml`` (one
writable module) and ``rsyncd.secrets``, then execs ``backupd serve``.
``RUN_MODE=sersync`` renders ``pusher.yaml`` and ``rsync.passwd``, then
execs ``backupd watch``. ``USE_CONF_FILE=1`` (or a path) uses a mounted
config as is, after loading it once to fail early.

The seed image's forms work unchanged: without ``RUN_MODE`` the mode is
sersync when a sersync.conf is mounted at ``SERSYNC_CONF_PATH``
(``/usr/local/sersync/etc/sersync.conf``, the seed's path), else rsyncd;
in sersync mode that mounted file is used as is without ``USE_CONF_FILE``
(unless ``LISTEN_DIR`` asks for a rendered config). The HEALTHCHECK
(``healthcheck``) resolves the mode the same way. The variables, their
defaults and meaning are listed in ``RSYNCD_VARS`` / ``SERSYNC_VARS`` (and
in container/Dockerfile). Bad values stop with every problem listed and
exit status 78 (EX_CONFIG).

No password is baked in: in rsyncd mode without ``RSYNCD_PASSWD`` one is
generated on the first start, printed once and kept (mode 600) in the
secrets file, which later starts reuse.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import secrets as token_source
import shlex
import socket
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from backupd.errors import BackupdError, ConfigError
from backupd.ops.healthcheck import healthcheck

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


# ---------------------------------------------------------------- planning


def plan_from_env(env: Mapping[str, str], host: HostFacts | None = None) -> Plan:
    """Decide everything from ``env``: the files to write and the argv to exec.

    Reads (never writes) the filesystem: directories named by the
    environment, a kept secrets file, a mounted config.

    Raises:
        EntrypointError: one line per bad or missing value.
    """
    host = host or HostFacts.current()
    e = _Env(env)
    mode = resolve_mode(env)
    config_dir = e.abs_dir("BACKUPD_CONFIG_DIR", e.text("BACKUPD_CONFIG_DIR", str(DEFAULT_CONFIG_DIR)), False)
    if mode not in DEFAULT_RUN_AS:
        raise EntrypointError(f"RUN_MODE={mode!r}: expected rsyncd or sersync")
    metrics = _metrics_address(e)
    run_as = _run_as(e, mode, host)
    if mode == "rsyncd":
        plan = _plan_rsyncd(e, config_dir, metrics, run_as, host)
    else:
        plan = _plan_sersync(e, config_dir, metrics, run_as)
    if e.errors:
        raise EntrypointError("\n".join(e.errors))
    return plan


def legacy_sersync_conf(env: Mapping[str, str]) -> Path:
    """Where the seed image's sersync.conf is mounted (``SERSYNC_CONF_PATH``, default the seed's path)."""
    return Path(env.get("SERSYNC_CONF_PATH", "").strip() or SERSYNC_LEGACY_CONF)


def resolve_mode(env: Mapping[str, str]) -> str:
    """``RUN_MODE`` (lower case); unset: ``sersync`` if a sersync.conf is mounted, else ``rsyncd``.

    The seed image defaults to sersync when its sersync.conf is mounted,
    so its ``docker run -v .../sersync.conf:/usr/local/sersync/etc/sersync.conf``
    form (no ``RUN_MODE``) starts the pusher here too.
    """
    given = env.get("RUN_MODE", "").strip().lower()
    if given:
        return given
    return "sersync" if legacy_sersync_conf(env).is_file() else "rsyncd"


def _backupd(*args: str) -> list[str]:
    return [sys.executable, "-m", "backupd", *args]


def _metrics_address(e: _Env) -> str | None:
    raw = e.env.get("METRICS_ADDRESS")
    if raw is not None and raw.strip().lower() in OFF_WORDS:
        return None
    from backupd.ops.metrics import parse_address

    text = e.text("METRICS_ADDRESS", DEFAULT_METRICS)
    try:
        parse_address(text)
    except ConfigError as exc:
        e.errors.append(f"METRICS_ADDRESS: {exc}")
    return text


def _run_as(e: _Env, mode: str, host: HostFacts) -> tuple[int, int] | None:
    """``(uid, gid)`` to drop to, or None to stay as we are."""
    name = e.text("RUN_AS", DEFAULT_RUN_AS[mode])
    if host.euid != 0 and not e.given("RUN_AS"):
        return None  # started as a user already (docker run --user): stay
    ids = _resolve_user(name)
    if ids is None:
        e.errors.append(f"RUN_AS={name!r}: no such user (use a name, uid or uid:gid; root to stay root)")
        return None
    if host.euid != 0:
        if ids[0] != host.euid:
            e.errors.append(f"RUN_AS={name!r}: cannot switch users, the container runs as uid {host.euid}")
        return None
    return None if ids[0] == 0 else ids


def _resolve_user(name: str) -> tuple[int, int] | None:
    uid_text, _, gid_text = name.partition(":")
    if uid_text.isdigit() and (not gid_text or gid_text.isdigit()):
        return int(uid_text), int(gid_text or uid_text)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


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


# ---------------------------------------------------------------- rsyncd mode


def _plan_rsyncd(e: _Env, config_dir: Path, metrics: str | None, run_as, host: HostFacts) -> Plan:
    """RUN_MODE=rsyncd: backupd.yaml + rsyncd.secrets, exec ``backupd serve``."""
    port = e.number("RSYNCD_PORT", 873, 1, 65535)
    keep_days = e.number("KEEP_HISTORY_BACKUP_DAYS", 7, 0)
    tail = ["--metrics-address", metrics] if metrics else []
    tail += ["--log-json"] if e.flag("LOG_JSON", False) else []
    candidates = [config_dir / "backupd.yaml", config_dir / "rsyncd.conf", Path("/etc/rsyncd.conf")]
    mounted = _use_conf_file(e, candidates)
    prefix = _drop_prefix(run_as, port, host)
    if mounted is None:
        return _rsyncd_rendered(e, config_dir, port, keep_days, prefix, tail, run_as, host.euid)
    cfg = _check_loads(e, _load_daemon, mounted)
    if cfg is not None and run_as is not None:
        _check_access(e, cfg, mounted, run_as)
    if e.given("KEEP_HISTORY_BACKUP_DAYS"):
        e.warnings.append(
            "KEEP_HISTORY_BACKUP_DAYS is ignored with USE_CONF_FILE: set 'history keep days' in the config"
        )
    port_arg = ["--port", str(port)] if e.given("RSYNCD_PORT") else []
    if e.given("RSYNCD_SSH_PORT"):
        port_arg += ["--ssh-port", str(e.number("RSYNCD_SSH_PORT", 0, 0, 65535))]
    argv = prefix + _backupd("serve", "--config", str(mounted), *port_arg, *tail)
    return Plan("rsyncd", tuple(argv), mounted, warnings=tuple(e.warnings))


def _rsyncd_rendered(
    e: _Env, config_dir: Path, port: int, keep_days: int, prefix: list[str], tail: list[str], run_as,
    euid: int,
) -> Plan:
    """The one-module config and secrets file made from the RSYNCD_* variables.

    A server that stays root (RUN_AS=root) gets ``uid``/``gid`` = root in the
    module, so it keeps file owners as asked: without them a root server runs
    sessions as nobody/nogroup, as rsyncd does.
    """
    module = e.word("RSYNCD_MOD_NAME", "data", "[]/#;:")
    user = e.word("RSYNCD_USER", "rsync", ":,@#")
    data = e.abs_dir("RSYNCD_PATH", e.text("RSYNCD_PATH", "/data"))
    if run_as is not None and data.is_dir() and not _allows(data.stat(), *run_as, stat.S_IWUSR):
        e.errors.append(
            f"RSYNCD_PATH={str(data)!r} is not writable by uid {run_as[0]}: "
            f"chown {run_as[0]}:{run_as[1]} it on the host, or set RUN_AS=root"
        )
    secrets_path = config_dir / "rsyncd.secrets"
    password, generated = _password(e, secrets_path, user)
    config = _rsyncd_config(e, module, user, data, port, keep_days, secrets_path)
    if run_as is None and euid == 0:
        config["modules"][module].update(uid="0", gid="0")
    config_path = config_dir / "backupd.yaml"
    text = RENDERED_HEADER + yaml.safe_dump(config, sort_keys=False)
    if not e.errors:
        _check_loads(e, _load_daemon, config_path, text)
    notices = ()
    if generated:
        notices = (
            f"backupd: generated the password of user '{user}': {password}\n"
            f"backupd: it is kept in {secrets_path} "
            "(shown only now; set RSYNCD_PASSWD to choose one)",
        )
    files = (
        RenderedFile(config_path, text),
        RenderedFile(secrets_path, f"{user}:{password}\n", secret=True),
    )
    argv = prefix + _backupd("serve", "--config", str(config_path), *tail)
    dirs = (config_dir,)
    return Plan("rsyncd", tuple(argv), config_path, files, dirs, run_as, notices, tuple(e.warnings))


def _check_access(e: _Env, cfg, config_path: Path, run_as: tuple[int, int]) -> None:
    """A mounted config under RUN_AS: its files readable, writable module paths writable."""
    uid, gid = run_as
    checks = [(config_path, stat.S_IRUSR, "readable", "config")]
    for m in cfg.modules.values():
        if m.secrets_file is not None:
            checks.append((m.secrets_file, stat.S_IRUSR, "readable", f"secrets file of module {m.name}"))
        if not m.read_only:
            checks.append((m.path, stat.S_IWUSR, "writable", f"path of module {m.name}"))
    for path, bit, word, what in checks:
        try:
            st = os.stat(path)
        except OSError:
            continue  # missing: the server says so when a client asks for it
        if not _allows(st, uid, gid, bit):
            e.errors.append(f"{what} {path} is not {word} by uid {uid}: chown {uid}:{gid} it, or set RUN_AS=root")


def _rsyncd_config(e: _Env, module: str, user: str, data: Path, port: int, keep_days: int, secrets: Path) -> dict:
    hosts = e.text("RSYNCD_HOSTS_ALLOW", "0.0.0.0/0").replace(",", " ").split()
    for bad in (h for h in hosts if not _host_pattern_ok(h)):
        e.errors.append(f"RSYNCD_HOSTS_ALLOW: {bad!r} is not an address, network (a.b.c.d/n) or host-name pattern")
    settings = {
        "path": str(data),
        "comment": f"{data} directory",
        "read_only": False,
        "auth_users": [user],
        "secrets_file": str(secrets),
        "hosts_allow": hosts,
        "history": True,
        "history_keep_days": keep_days,
        "transfer_logging": e.flag("RSYNCD_TRANSFER_LOGGING", False),
    }
    if e.given("RSYNCD_LOG_FORMAT"):
        settings["log_format"] = e.text("RSYNCD_LOG_FORMAT")
    glob = {
        "port": port,
        "address": e.text("RSYNCD_ADDRESS", "0.0.0.0"),
        "reverse_lookup": False,
        "max_connections": e.number("RSYNCD_MAX_CONN", 300, 0),
    }
    if e.given("RSYNCD_LOG_FILE"):
        glob["log_file"] = e.text("RSYNCD_LOG_FILE")
    ssh_port = e.number("RSYNCD_SSH_PORT", 0, 0, 65535)
    if ssh_port:  # the SSH transport: host key kept with the rendered config, keys from the mount
        glob["ssh_port"] = ssh_port
        glob["ssh_host_key"] = str(secrets.parent / "ssh_host_ed25519_key")
        glob["ssh_authorized_keys"] = e.text("RSYNCD_SSH_KEYS", "/etc/backupd/authorized_keys/%u")
    return {"global": glob, "modules": {module: settings}}


_HOST_NAME = re.compile(r"[A-Za-z0-9*?._-]+")


def _host_pattern_ok(pattern: str) -> bool:
    """One ``hosts allow`` entry as rsync access.c reads it: address, network or name pattern."""
    if "/" in pattern:
        net, _, mask = pattern.partition("/")
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if "." in mask else int(mask)
            ipaddress.ip_network(f"{net}/{prefix}", strict=False)
        except ValueError:
            return False
        return True
    try:
        ipaddress.ip_address(pattern)
        return True
    except ValueError:
        pass
    looks_numeric = all(c.isdigit() or c == "." for c in pattern)
    return bool(_HOST_NAME.fullmatch(pattern)) and not looks_numeric


def _password(e: _Env, secrets_path: Path, user: str) -> tuple[str, bool]:
    """``(password, generated_now)``: RSYNCD_PASSWD, else the kept one, else a new one."""
    given = e.env.get("RSYNCD_PASSWD", "")
    if given:
        if "\n" in given or "\0" in given:
            e.errors.append("RSYNCD_PASSWD: must be one line")
        return given, False
    from backupd.config.secrets import read_secrets

    if secrets_path.is_file():
        try:
            kept = read_secrets(secrets_path, strict_modes=False).get(user)
        except ConfigError:
            kept = None
        if kept:
            return kept, False
    return token_source.token_urlsafe(18), True


def _allows(st: os.stat_result, uid: int, gid: int, user_bit: int) -> bool:
    """Whether ``uid``/``gid`` gets ``user_bit`` (S_IRUSR or S_IWUSR) on a file with ``st``."""
    if st.st_uid == uid:
        return bool(st.st_mode & user_bit)
    if st.st_gid == gid:
        return bool(st.st_mode & (user_bit >> 3))
    return bool(st.st_mode & (user_bit >> 6))


def _load_daemon(path: Path, text: str | None = None):
    from backupd.config.load import load_config
    from backupd.config.yaml_conf import parse_yaml_conf

    return load_config(path) if text is None else parse_yaml_conf(text, source=path)


# ---------------------------------------------------------------- sersync mode


def _plan_sersync(e: _Env, config_dir: Path, metrics: str | None, run_as) -> Plan:
    """RUN_MODE=sersync: pusher.yaml + rsync.passwd, exec ``backupd watch``."""
    legacy = legacy_sersync_conf(e.env)
    mounted = _use_conf_file(e, [config_dir / "pusher.yaml", config_dir / "sersync.conf", legacy])
    if mounted is None and not e.given("USE_CONF_FILE") and legacy.is_file():
        if e.given("LISTEN_DIR"):
            e.warnings.append(f"{legacy} is not used: LISTEN_DIR is set (USE_CONF_FILE=1 uses the file)")
        else:
            mounted = legacy  # the seed's form: a mounted sersync.conf, nothing else
    if e.given("KEEP_HISTORY_BACKUP_DAYS"):
        e.number("KEEP_HISTORY_BACKUP_DAYS", 7, 0)
        e.warnings.append(
            "KEEP_HISTORY_BACKUP_DAYS is ignored in sersync mode: the backupd server keeps and purges history"
        )
    prefix = _drop_prefix(run_as, None, HostFacts(0))
    tail = ["--log-json"] if e.flag("LOG_JSON", False) else []
    if mounted is not None:
        _check_loads(e, _load_pusher, mounted)
        argv = prefix + _backupd("watch", "--config", str(mounted), *tail)
        return Plan("sersync", tuple(argv), mounted, warnings=tuple(e.warnings))
    password_file, files = _push_password(e, config_dir)
    config = _pusher_config(e, password_file, metrics)
    config_path = config_dir / "pusher.yaml"
    text = RENDERED_HEADER + yaml.safe_dump(config, sort_keys=False)
    if not e.errors:
        _check_loads(e, _load_pusher, config_path, text)
    state_dir = Path(config["state_dir"])
    argv = prefix + _backupd("watch", "--config", str(config_path), *tail)
    files = (RenderedFile(config_path, text), *files)
    return Plan(
        "sersync",
        tuple(argv),
        config_path,
        files,
        (config_dir, state_dir),
        run_as,
        (),
        tuple(e.warnings),
    )


def _push_password(e: _Env, config_dir: Path) -> tuple[Path | None, tuple[RenderedFile, ...]]:
    if e.env.get("RSYNCD_PASSWD"):
        path = config_dir / "rsync.passwd"
        return path, (RenderedFile(path, e.env["RSYNCD_PASSWD"].strip("\n") + "\n", secret=True),)
    if e.given("RSYNC_PASSWD_FILE"):
        path = Path(e.text("RSYNC_PASSWD_FILE"))
        if not path.is_file():
            e.errors.append(f"RSYNC_PASSWD_FILE={str(path)!r}: no such file (mount it)")
        return path, ()
    e.errors.append("RSYNCD_PASSWD or RSYNC_PASSWD_FILE: the targets' password is required in sersync mode")
    return None, ()


def _pusher_config(e: _Env, password_file: Path | None, metrics: str | None) -> dict:
    """The pusher YAML document (pusher_yaml.py's shape) from the environment."""
    rsync = {"timeout_s": e.number("RSYNC_TIMEOUT", 180, 0)}
    if password_file is not None:
        rsync["password_file"] = str(password_file)
    if e.given("RSYNC_BWLIMIT"):
        rsync["bwlimit"] = e.text("RSYNC_BWLIMIT")
    if e.given("EXTRA_RSYNC_ARGS"):
        rsync["extra_args"] = _words(e, "EXTRA_RSYNC_ARGS")
    config = {
        "state_dir": str(e.abs_dir("BACKUPD_STATE_DIR", e.text("BACKUPD_STATE_DIR", str(DEFAULT_STATE_DIR)), False)),
        "delay_s": _duration(e, "REAL_TIME_SYNC_DELAY", "5", "s"),
        "realtime": e.flag("REAL_TIME_SYNC_ENABLE", True),
        "full_sync": _full_sync(e),
        "rsync": rsync,
    }
    if e.given("PRE_SYNC_COMMAND"):
        config["pre_sync_command"] = e.text("PRE_SYNC_COMMAND")
    if e.given("HA_DSN"):
        config["ha"] = {
            "dsn": e.text("HA_DSN"),
            "node_id": e.text("HA_NODE_ID", socket.gethostname()),
        }
    if metrics:
        from backupd.ops.metrics import parse_address

        try:
            mhost, mport = parse_address(metrics)
            config["metrics"] = {"address": mhost, "port": mport}
        except ConfigError:
            pass  # already reported
    config["sources"] = _sources(e, _targets(e))
    return config


def _full_sync(e: _Env) -> dict:
    full = {"at_start": e.flag("FULL_RSYNC_FIRST_ENABLE", True)}
    if e.flag("FULL_RSYNC_ENABLE", False):
        full["interval"] = _duration(e, "FULL_RSYNC_INTERVAL", "3", "d")
    full["timeout"] = _duration(e, "FULL_RSYNC_TIMEOUT", "12", "h")
    return full


def _sources(e: _Env, targets: list[str]) -> list[dict]:
    """LISTEN_DIR's ``[alias=]/dir`` words, each pushed to every target."""
    exclude = _words(e, "PUSH_EXCLUDE")
    sources = []
    for item in _words(e, "LISTEN_DIR"):
        alias, _, path = item.rpartition("=")
        src = {"path": str(e.abs_dir("LISTEN_DIR", path)), "targets": targets}
        if alias:
            src["remote_subdir"] = alias
        if exclude:
            src["exclude"] = exclude
        sources.append(src)
    if not sources:
        e.errors.append("LISTEN_DIR: required in sersync mode ('[alias=]/dir ...')")
    return sources


def _targets(e: _Env) -> list[str]:
    user = e.word("RSYNCD_USER", "rsync", ":@/#")
    if e.given("PUSH_TARGETS"):
        return _words(e, "PUSH_TARGETS")
    module = e.word("RSYNCD_MOD_NAME", "data", "[]/#;:")
    port = e.number("RSYNCD_PORT", 873, 1, 65535)
    hosts = e.text("RSYNCD_IP").replace(",", " ").split()
    if not hosts:
        e.errors.append("RSYNCD_IP or PUSH_TARGETS: at least one target is required in sersync mode")
    urls = []
    for item in hosts:
        host, _, port_text = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        if port_text and not port_text.isdigit():
            e.errors.append(f"RSYNCD_IP: {item!r}: expected host or host:port")
            continue
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        urls.append(f"rsync://{user}@{host}:{port_text or port}/{module}")
    return urls


def _words(e: _Env, name: str) -> list[str]:
    try:
        return shlex.split(e.text(name))
    except ValueError as exc:
        e.errors.append(f"{name}: {exc}")
        return []


_UNIT_NAMES = {"s": "seconds", "h": "hours", "d": "days"}


def _duration(e: _Env, name: str, default: str, unit: str) -> str:
    """A number in the variable's sersync.conf unit, or a number with its own unit."""
    raw = e.text(name, default).lower()
    number = raw[:-1] if raw[-1:] in "smhdw" else raw
    if not number.replace(".", "", 1).isdigit():
        e.errors.append(f"{name}={raw!r}: expected a number of {_UNIT_NAMES[unit]} (or 90s, 30m, 12h, 3d)")
        return f"{default}{unit}"
    return raw if raw[-1:] in "smhdw" else f"{raw}{unit}"


def _load_pusher(path: Path, text: str | None = None):
    """The PusherConfig of ``text`` (YAML) or of the file (YAML or sersync.conf, by name)."""
    from backupd.config import pusher_yaml, sersync_conf

    if text is not None:
        return pusher_yaml.parse_pusher_yaml(text, source=path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return pusher_yaml.load_pusher_yaml(path)
    return sersync_conf.load_sersync_conf(path)


# ---------------------------------------------------------------- doing it


def apply_plan(plan: Plan, out=None) -> None:
    """Create the directories, write the files (mode 600, atomically), print notices.

    Raises:
        EntrypointError: a directory or file cannot be written.
    """
    try:
        for path in plan.dirs:
            path.mkdir(parents=True, exist_ok=True)
            if plan.owner is not None:
                os.chown(path, *plan.owner)
        for item in plan.files:
            _write_file(item, plan.owner)
    except OSError as exc:
        raise EntrypointError(f"cannot write {exc.filename}: {exc.strerror}") from None
    for line in (*plan.warnings, *plan.notices):
        print(line, file=out or sys.stdout, flush=True)


def _write_file(item: RenderedFile, owner: tuple[int, int] | None) -> None:
    tmp = item.path.with_name(f".{item.path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, item.mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), item.mode)  # exact, whatever the umask
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(item.text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, item.path)
    finally:
        tmp.unlink(missing_ok=True)


def plan_as_json(plan: Plan) -> str:
    """The plan for people and tests: argv, files (secrets redacted), notices redacted."""
    files = {str(f.path): {"mode": f"{f.mode:04o}", "text": "<secret>" if f.secret else f.text} for f in plan.files}
    doc = {
        "mode": plan.mode,
        "argv": list(plan.argv),
        "config": str(plan.config_path),
        "files": files,
        "warnings": list(plan.warnings),
        "generates_password": bool(plan.notices),
    }
    return json.dumps(doc, indent=2)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """``python -m backupd.ops.entrypoint [run|plan|healthcheck]``; ``run`` execs."""
    args = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    command = args[0] if args else "run"
    if command == "healthcheck":
        return healthcheck(env)
    if command not in ("run", "plan"):
        print(f"usage: entrypoint [run|plan|healthcheck] (got {command!r})", file=sys.stderr)
        return 2
    try:
        plan = plan_from_env(env)
        if command == "plan":
            print(plan_as_json(plan))
            return 0
        apply_plan(plan)
    except EntrypointError as exc:
        for line in str(exc).splitlines():
            print(f"backupd-entrypoint: error: {line}", file=sys.stderr)
        return EX_CONFIG
    sys.stdout.flush()
    os.execvp(plan.argv[0], list(plan.argv))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
