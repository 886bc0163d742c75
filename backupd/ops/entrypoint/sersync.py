"""Entrypoint, sersync mode: the environment -> pusher.yaml + rsync.passwd and ``backupd watch``."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import yaml

from backupd.errors import ConfigError
from backupd.ops.entrypoint.env import (
    DEFAULT_STATE_DIR,
    RENDERED_HEADER,
    HostFacts,
    Plan,
    RenderedFile,
    _backupd,
    _check_loads,
    _drop_prefix,
    _Env,
    _use_conf_file,
    legacy_sersync_conf,
)


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


