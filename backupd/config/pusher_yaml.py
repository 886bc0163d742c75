"""Reader for the pusher's YAML config (``backupd watch/push --config pusher.yaml``).

Shape (all keys optional but ``state_dir`` and ``sources``; may also sit
under a top-level ``pusher:`` key, beside a server's ``global``/``modules``)::

    state_dir: /var/lib/backupd/pusher   # queues and states (SQLite)
    logs_dir: /var/log/backupd           # per-target rsync logs (default: state_dir)
    delay_s: 5                           # the coalescing window
    realtime: true                       # false: full syncs only
    full_sync: {at_start: true, interval: 3d, timeout: 12h}
    pre_sync_command: /usr/local/bin/dump-db   # before each full sync
    rsync: {binary: rsync, timeout_s: 180, bwlimit: 50M,
            extra_args: [--partial], password_file: /etc/rsync.passwd}
    queue: {max_pending: 100000, retry_min_s: 1, retry_max_s: 300}
    ha: {dsn: "host=db dbname=backupd", node_id: web1, group: default, lease_s: 15}
    metrics: {address: 127.0.0.1, port: 9109}
    sources:
      - path: /data/file
        remote_subdir: file-backup         # alias under each target
        exclude: ["*.tmp", "re:^cache/"]
        watch_exclude: ["re:logs|tmp"]     # events only (sersync's exclude_file_rule)
        pre_sync_command: ...              # overrides the global one
        targets:
          - rsync://rsync@10.0.0.5/backup1
          - {url: "rsync://rsync@10.0.0.6:8730/backup1", password_file: /etc/other.pass}
          - {url: "rsync://rsync@10.0.0.7:2222/backup1", transport: ssh, identity_file: /etc/backupd/id_ed25519}

Durations are seconds, or strings with a unit: ``90s``, ``30m``, ``12h``, ``3d``.
Errors name ``file:line: key.path``; unknown keys are warnings.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import yaml

from backupd.config.pusher_model import (
    HaConfig,
    PusherConfig,
    SourceConfig,
    Target,
    parse_target_url,
    validate_pusher,
)
from backupd.config.rsyncd_conf import read_config_text
from backupd.config.yaml_conf import load_yaml_node
from backupd.errors import ConfigError

KeyPath = tuple[str, ...]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TOP = {"state_dir", "logs_dir", "delay_s", "realtime", "full_sync", "pre_sync_command", "rsync", "queue",
        "ha", "metrics", "sources"}
_SECTION_KEYS = {
    "full_sync": {"at_start", "interval", "interval_s", "timeout", "timeout_s"},
    "rsync": {"binary", "timeout_s", "bwlimit", "extra_args", "password_file"},
    "queue": {"max_pending", "retry_min_s", "retry_max_s"},
    "ha": {"dsn", "node_id", "group", "lease_s"},
    "metrics": {"address", "port"},
}
_SOURCE_KEYS = {"path", "remote_subdir", "exclude", "watch_exclude", "pre_sync_command", "targets"}


def load_pusher_yaml(path: Path) -> PusherConfig:
    """Read and parse the pusher YAML at ``path``.

    Raises:
        ConfigError: unreadable, invalid YAML, or a wrong value (``file:line: key``).
    """
    return parse_pusher_yaml(read_config_text(path), source=path)


def parse_pusher_yaml(text: str, source: Path | None = None) -> PusherConfig:
    """Parse YAML ``text``; relative paths are taken from ``source``'s directory.

    Raises:
        ConfigError: see :func:`load_pusher_yaml`.
    """
    reader = _Reader(text, source)
    return reader.build()


class _Reader:
    """One parse: the YAML document, its key lines, the warnings so far."""

    def __init__(self, text: str, source: Path | None) -> None:
        self.label = str(source) if source is not None else "<string>"
        self.source = source
        self.base = source.absolute().parent if source is not None else Path.cwd()
        self.lines: dict[KeyPath, int] = {}
        self.warnings: list[str] = []
        data = self._compose(text)
        root = self.mapping(data, ())
        if "pusher" in root:
            self.prefix: KeyPath = ("pusher",)
            root = self.mapping(root["pusher"], self.prefix)
        else:
            self.prefix = ()
        self.root = root

    # ------------------------------------------------------------ plumbing

    def where(self, path: KeyPath) -> str:
        full = (*self.prefix, *path)
        line = next((self.lines[full[:n]] for n in range(len(full), 0, -1) if full[:n] in self.lines), 1)
        return f"{self.label}:{line}: {'.'.join(full)}" if full else f"{self.label}:{line}"

    def fail(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {message}")

    def mapping(self, value: object, path: KeyPath) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where(path)}: must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}

    def check_keys(self, data: dict, allowed: set[str], path: KeyPath) -> None:
        for key in data:
            if key not in allowed:
                self.warnings.append(f"{self.where((*path, key))}: unknown key ignored")

    def _compose(self, text: str) -> object:
        data, node = load_yaml_node(text, self.label)
        self._note(node, ())
        return data

    def _note(self, node: yaml.Node | None, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, str(key_node.value))
                self.lines[key_path] = key_node.start_mark.line + 1
                self._note(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, str(i))] = item.start_mark.line + 1
                self._note(item, (*path, str(i)))

    # ------------------------------------------------------------ values

    def get(self, data: dict, key: str, path: KeyPath, conv: Callable, default: object = None):
        if data.get(key) is None:
            return default
        try:
            return conv(data[key])
        except (TypeError, ValueError) as exc:
            raise self.fail((*path, key), f"bad value {data[key]!r}: {exc}") from None

    def path_value(self, value: object) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a path")
        return self.base / Path(value).expanduser()

    def words(self, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ValueError("expected a string or a list of strings")
        return tuple(str(v) for v in value)

    # ------------------------------------------------------------ sections

    def build(self) -> PusherConfig:
        root = self.root
        self.check_keys(root, _TOP, ())
        sec = {name: self.mapping(root.get(name), (name,)) for name in _SECTION_KEYS}
        for name, keys in _SECTION_KEYS.items():
            self.check_keys(sec[name], keys, (name,))
        if root.get("state_dir") is None:
            raise self.fail(("state_dir",), "missing: where queues and states are kept")
        rsync, full, queue, metrics = sec["rsync"], sec["full_sync"], sec["queue"], sec["metrics"]
        default_pw = self.get(rsync, "password_file", ("rsync",), self.path_value)
        default_pre = self.get(root, "pre_sync_command", (), _string)
        sources = self._sources(root.get("sources"), default_pw, default_pre)
        config = PusherConfig(
            sources=sources,
            state_dir=self.get(root, "state_dir", (), self.path_value),
            logs_dir=self.get(root, "logs_dir", (), self.path_value, None),
            delay_s=self.get(root, "delay_s", (), parse_duration, 5.0),
            realtime=self.get(root, "realtime", (), _boolean, True),
            full_sync_at_start=self.get(full, "at_start", ("full_sync",), _boolean, True),
            full_sync_interval_s=self._either(full, "interval", ("full_sync",)),
            full_sync_timeout_s=self._either(full, "timeout", ("full_sync",)),
            rsync_binary=self.get(rsync, "binary", ("rsync",), _string, "rsync"),
            rsync_timeout_s=int(self.get(rsync, "timeout_s", ("rsync",), parse_duration, 600)),
            bwlimit=self.get(rsync, "bwlimit", ("rsync",), _bwlimit),
            extra_args=self.get(rsync, "extra_args", ("rsync",), _args, ()),
            max_pending=self.get(queue, "max_pending", ("queue",), _positive_int, 100_000),
            retry_min_s=self.get(queue, "retry_min_s", ("queue",), parse_duration, 1.0),
            retry_max_s=self.get(queue, "retry_max_s", ("queue",), parse_duration, 300.0),
            ha=self._ha(sec["ha"]),
            metrics_address=self.get(metrics, "address", ("metrics",), _string, "127.0.0.1"),
            metrics_port=self.get(metrics, "port", ("metrics",), _positive_int),
            source=self.source,
            warnings=tuple(self.warnings),
        )
        return validate_pusher(config, self.label)

    def _either(self, data: dict, name: str, path: KeyPath) -> float | None:
        """``name`` or ``name_s``: a duration; 0 or absent means off."""
        value = self.get(data, f"{name}_s", path, parse_duration)
        if value is None:
            value = self.get(data, name, path, parse_duration)
        return value or None

    def _ha(self, ha: dict) -> HaConfig | None:
        if not ha:
            return None
        if not ha.get("dsn"):
            raise self.fail(("ha", "dsn"), "missing: the PostgreSQL connection string")
        return HaConfig(
            dsn=str(ha["dsn"]),
            node_id=self.get(ha, "node_id", ("ha",), _string) or socket.gethostname(),
            group=self.get(ha, "group", ("ha",), _string, "default"),
            lease_s=self.get(ha, "lease_s", ("ha",), parse_duration, 15.0),
        )

    def _sources(self, value: object, default_pw: Path | None, default_pre: str | None):
        if not isinstance(value, list) or not value:
            raise self.fail(("sources",), "expected a non-empty list of sources")
        return tuple(
            self._source(self.mapping(item, ("sources", str(i))), ("sources", str(i)), default_pw, default_pre)
            for i, item in enumerate(value)
        )

    def _source(self, data: dict, path: KeyPath, default_pw, default_pre) -> SourceConfig:
        self.check_keys(data, _SOURCE_KEYS, path)
        if data.get("path") is None:
            raise self.fail(path, "a source needs a path")
        targets = data.get("targets")
        if not isinstance(targets, list) or not targets:
            raise self.fail((*path, "targets"), "expected a non-empty list of rsync:// URLs")
        return SourceConfig(
            path=self.get(data, "path", path, self.path_value),
            targets=tuple(self._target(t, (*path, "targets", str(i)), default_pw) for i, t in enumerate(targets)),
            remote_subdir=self.get(data, "remote_subdir", path, _string, "").strip("/"),
            exclude=self.get(data, "exclude", path, self.words, ()),
            watch_exclude=self.get(data, "watch_exclude", path, self.words, ()),
            pre_sync_command=self.get(data, "pre_sync_command", path, _string, default_pre),
        )

    def _target(self, value: object, path: KeyPath, default_pw: Path | None) -> Target:
        if isinstance(value, str):
            value = {"url": value}
        data = self.mapping(value, path)
        self.check_keys(data, {"url", "password_file", "transport", "identity_file", "known_hosts"}, path)
        if not isinstance(data.get("url"), str):
            raise self.fail(path, "a target needs a url")
        transport = data.get("transport", "rsync")
        if transport not in ("rsync", "ssh"):
            raise self.fail((*path, "transport"), f"expected 'rsync' or 'ssh', not {transport!r}")
        identity = self.get(data, "identity_file", path, self.path_value, None)
        known = self.get(data, "known_hosts", path, self.path_value, None)
        password_file = None if transport == "ssh" else self.get(data, "password_file", path, self.path_value,
                                                                  default_pw)
        return parse_target_url(data["url"], password_file, f"{self.where(path)}: ", transport=transport,
                                identity_file=identity, known_hosts=known)


def parse_duration(value: object) -> float:
    """Seconds from a number or ``"<number><unit>"`` (s, m, h, d, w).

    Raises:
        ValueError: not a non-negative duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        unit = _UNITS.get(text[-1:]) if text[-1:].isalpha() else 1
        if unit is None:
            raise ValueError(f"unknown unit in {value!r} (s, m, h, d, w)")
        seconds = float(text[:-1] if text[-1:].isalpha() else text) * unit
    if seconds < 0:
        raise ValueError("negative duration")
    return seconds


def _string(value: object) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("expected a string")
    return str(value)


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected a boolean")


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or int(value) != float(value) or int(value) < 1:
        raise ValueError("expected a positive whole number")
    return int(value)


def _bwlimit(value: object) -> str | None:
    """rsync's ``--bwlimit`` text (KiB/s, or with a K/M/G suffix); 0 means none."""
    text = str(value).strip()
    if not text or text.rstrip("kKmMgGbB") in ("0", "0.0"):
        return None
    if not text.rstrip("kKmMgGbB").replace(".", "", 1).isdigit():
        raise ValueError("expected a rate such as 1000 or 50M")
    return text


def _args(value: object) -> tuple[str, ...]:
    import shlex

    if isinstance(value, str):
        return tuple(shlex.split(value))
    if not isinstance(value, list):
        raise ValueError("expected a list of arguments or one string")
    return tuple(str(v) for v in value)
