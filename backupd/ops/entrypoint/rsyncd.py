"""Entrypoint, rsyncd mode: the environment -> backupd.yaml + rsyncd.secrets and ``backupd serve``."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as token_source
import stat
from pathlib import Path

import yaml

from backupd.errors import ConfigError
from backupd.ops.entrypoint.env import (
    RENDERED_HEADER,
    HostFacts,
    Plan,
    RenderedFile,
    _backupd,
    _check_loads,
    _drop_prefix,
    _Env,
    _use_conf_file,
)


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


