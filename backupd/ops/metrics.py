"""Prometheus metrics of the server (``backupd serve``) and their HTTP exporter.

Server, across processes: every session runs in a worker process forked by
the listener (transport/worker.py), so a counter bumped in a worker must
reach the exporter, which runs as a thread of the listener. We use
prometheus-client's multiprocess mode:

1. ``start_server_exporter`` (``backupd serve --metrics-address``) creates a
   private directory (``mkdtemp``, mode 700), sets PROMETHEUS_MULTIPROC_DIR
   and switches prometheus-client to mmap-backed values, all before the first
   fork. The metric objects are created then, in the listener.
2. A worker inherits them; on its first update prometheus-client notices the
   new process and writes to its own files ``counter_<id>.db`` and
   ``gauge_livesum_<id>.db``. ``<id>`` is ``<pid>.<random>``, unique even
   when the kernel reuses a pid.
3. A scrape merges every file (counters sum). Before merging, files of dead
   workers are compacted, under a lock shared with the scrape: counters are
   added into one ``counter_archive.db`` and the file removed; live gauges
   of dead workers are dropped. The listener runs the same compaction every
   minute, so the directory holds about one file pair per *running* session.
4. A forked process drops its copy of the exporter's listening socket
   (``after_fork``; sessions do it in ``session_started``).
5. ``close()`` (serve's exit) removes the directory. After a SIGKILL of the
   listener it stays in the temp dir; the counters restart from zero with
   the next listener, as Prometheus counters may.

History size is not counted by the workers: the exporter measures each
module's history folder when scraped (cached for ``HISTORY_TTL_S``); the
last scheduled verify of each module is read from its catalog
(ops/verify_schedule.py ``VerifyCollector``).

Hooks (one call each from roles/session.py, receiver.py, generator.py) cost
a dict operation while metrics are off. They also keep a record of the
running session, which the transfer log (ops/logging.py) reads.

The pusher is one process: its metrics are plain in-process ones on its
own registry (backupd/pusher/metrics.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backupd.errors import ConfigError
from backupd.process import pid_alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ARCHIVE_FILE = "counter_archive.db"
COMPACT_INTERVAL_S = 60.0
HISTORY_TTL_S = 60.0
NO_MODULE = "-"  # label value before a module is chosen (listings, early refusals)


# ---------------------------------------------------------------- addresses


def parse_address(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` -> ``(host, port)``.

    Raises:
        ConfigError: no port, or a port outside 1..65535.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"metrics address {text!r}: expected HOST:PORT with a port in 1..65535")
    return host or default_host, int(port_text)


# ---------------------------------------------------------------- session records


@dataclass
class SessionRecord:
    """A running session as the ops hooks see it: the session and its module."""

    session: object
    module: object | None = None  # config.model.ModuleConfig once the client named one
    _host: str | None = field(default=None, repr=False)
    _literal_mark: int = field(default=0, repr=False)

    def literal_delta(self, total: int) -> int:
        """Literal bytes since the previous call, from the receiver's running ``total``."""
        delta, self._literal_mark = total - self._literal_mark, total
        return delta

    def host(self) -> str:
        """The peer's name (``reverse lookup``), once per session; rsync's UNDETERMINED else."""
        if self._host is None:
            name = None
            try:
                name = self.session.ctx.peer_host()
            except Exception:  # noqa: BLE001 - a resolver problem is not the session's
                name = None
            self._host = name or "UNDETERMINED"
        return self._host

    @property
    def module_name(self) -> str:
        """The module label: its name, or ``-``."""
        return self.module.name if self.module is not None else NO_MODULE


_ACTIVE: dict[int, SessionRecord] = {}


def session_record(outbox) -> SessionRecord | None:
    """The record of the running session whose Outbox is ``outbox`` (None if unknown)."""
    for record in _ACTIVE.values():
        if getattr(record.session, "outbox", None) is outbox:
            return record
    return None


# ---------------------------------------------------------------- server metrics


class ServerMetrics:
    """The server's metric objects; created once multiprocess mode is on."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        m = ("module",)
        self.sessions_started = Counter(
            "backupd_sessions_started", "Connections accepted by a worker", registry=None
        )
        self.sessions_active = Gauge(
            "backupd_sessions_active",
            "Sessions running now",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.sessions = Counter(
            "backupd_sessions",
            "Sessions ended, by module and exit code",
            (*m, "exit_code"),
            registry=None,
        )
        self.errors = Counter(
            "backupd_session_errors",
            "Sessions ended with a non-zero exit code",
            (*m, "exit_code"),
            registry=None,
        )
        self.auth_failures = Counter("backupd_auth_failures", "Failed logins", m, registry=None)
        self.bytes_in = Counter(
            "backupd_received_bytes", "Bytes read from clients (wire)", m, registry=None
        )
        self.bytes_out = Counter(
            "backupd_sent_bytes", "Bytes written to clients (multiplexed phase)", m, registry=None
        )
        self.files_in = Counter(
            "backupd_files_received", "Files received and committed", m, registry=None
        )
        self.file_bytes_in = Counter(
            "backupd_file_bytes_received", "Size of the files received", m, registry=None
        )
        self.literal_in = Counter(
            "backupd_literal_bytes_received", "Literal (unmatched) data received", m, registry=None
        )
        self.files_deleted = Counter(
            "backupd_files_deleted", "Entries deleted into history by --delete", m, registry=None
        )


_SERVER: ServerMetrics | None = None
_EXPORTER_PID: int | None = None
_EXPORTER_SOCKETS: list = []
_PROCESS_TOKEN: dict[int, str] = {}


def _process_identifier() -> str:
    """``<pid>.<random hex>``: distinct for every process, even after pid reuse."""
    pid = os.getpid()
    token = _PROCESS_TOKEN.get(pid)
    if token is None:
        token = _PROCESS_TOKEN[pid] = f"{pid}.{uuid.uuid4().hex[:12]}"
    return token


def enable_server_metrics(multiproc_dir: Path) -> ServerMetrics:
    """Switch prometheus-client to multiprocess mode in ``multiproc_dir``; create the metrics.

    Call in the listener before forking any worker.
    """
    global _SERVER
    from prometheus_client import values

    os.environ[MULTIPROC_ENV] = os.fspath(multiproc_dir)
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)
    _SERVER = ServerMetrics()
    return _SERVER


def disable_server_metrics() -> None:
    """Back to plain in-process values with no server metrics (tests, shutdown)."""
    global _SERVER
    from prometheus_client import values

    values.ValueClass = values.MutexValue
    os.environ.pop(MULTIPROC_ENV, None)
    _SERVER = None


# -- hooks (one call each from roles/session.py, receiver.py, generator.py) ---------------


def session_started(session) -> None:
    """Hook: a session begins in this process (worker, stdio or test)."""
    _ACTIVE[id(session)] = SessionRecord(session)
    after_fork()
    if _SERVER is not None:
        _SERVER.sessions_started.inc()
        _SERVER.sessions_active.inc()


def session_module(session, module) -> None:
    """Hook: the client named ``module`` (a ModuleConfig); later counts carry its name."""
    record = _ACTIVE.get(id(session))
    if record is not None:
        record.module = module


def auth_failed(module_name: str) -> None:
    """Hook: a login to ``module_name`` failed."""
    if _SERVER is not None:
        _SERVER.auth_failures.labels(module_name).inc()


def session_ended(session, code: int) -> None:
    """Hook: the session ended with exit ``code``; count it and its wire bytes."""
    record = _ACTIVE.pop(id(session), None)
    if _SERVER is None:
        return
    module = record.module_name if record is not None else NO_MODULE
    _SERVER.sessions_active.dec()
    _SERVER.sessions.labels(module, str(int(code))).inc()
    if int(code) != 0:
        _SERVER.errors.labels(module, str(int(code))).inc()
    inbox, outbox = getattr(session, "inbox", None), getattr(session, "outbox", None)
    _SERVER.bytes_in.labels(module).inc(getattr(inbox, "bytes_read", 0))
    _SERVER.bytes_out.labels(module).inc(getattr(outbox, "bytes_written", 0))


def file_received(module_name: str, size: int, literal: int) -> None:
    """Count one received file of ``size`` bytes, ``literal`` of them sent as data."""
    if _SERVER is not None:
        _SERVER.files_in.labels(module_name).inc()
        _SERVER.file_bytes_in.labels(module_name).inc(size)
        _SERVER.literal_in.labels(module_name).inc(max(literal, 0))


def files_deleted(module_name: str, count: int) -> None:
    """Count ``count`` entries deleted (moved to history) in ``module_name``."""
    if _SERVER is not None:
        _SERVER.files_deleted.labels(module_name).inc(count)


def after_fork() -> None:
    """In a process forked from the listener: close its copy of the exporter's socket.

    Without this a long-lived child (a session, a prune pass) keeps the
    metrics port bound after the listener exits. A no-op in the listener.
    """
    if _EXPORTER_PID is None or os.getpid() == _EXPORTER_PID:
        return
    for sock in _EXPORTER_SOCKETS:
        try:
            sock.close()
        except OSError:
            pass
    _EXPORTER_SOCKETS.clear()


# ---------------------------------------------------------------- collectors


class CompactingCollector:
    """Merges the multiprocess files; first folds the files of dead processes.

    Args:
        path: the PROMETHEUS_MULTIPROC_DIR.
        alive: ``pid -> bool``; default: signal 0 to the pid.
    """

    def __init__(self, path: Path, alive=None) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self._alive = alive or pid_alive
        self._archive = None

    def collect(self) -> Iterator:
        """Compact, then the merged metrics of all files (prometheus-client Collector)."""
        from prometheus_client.multiprocess import MultiProcessCollector

        with self.lock:
            self._compact_locked()
            files = glob.glob(os.path.join(self.path, "*.db"))
            merged = list(MultiProcessCollector.merge(files, accumulate=True))
        return iter(merged)

    def compact(self) -> int:
        """Fold the files of dead processes; returns how many files were removed."""
        with self.lock:
            return self._compact_locked()

    def close(self) -> None:
        """Release the archive file."""
        with self.lock:
            if self._archive is not None:
                self._archive.close()
                self._archive = None

    def _compact_locked(self) -> int:
        removed = 0
        own = os.getpid()
        for path in glob.glob(os.path.join(self.path, "*.db")):
            kind, _, ident = os.path.basename(path)[:-3].rpartition("_")
            pid_text = ident.split(".", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == own or self._alive(int(pid_text)):
                continue
            if kind == "counter":
                self._fold(path)
            os.remove(path)  # a dead process's live gauges mean nothing any more
            removed += 1
        return removed

    def _fold(self, path: str) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        if self._archive is None:
            self._archive = MmapedDict(os.path.join(self.path, ARCHIVE_FILE))
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(path):
            current, _ = self._archive.read_value(key)
            self._archive.write_value(key, current + value, 0.0)


class HistoryCollector:
    """``backupd_history_bytes`` / ``backupd_history_files`` per module, measured on scrape.

    The walk (lstat of every entry under ``<path>/<history dir>``, no symlink
    followed) is cached for ``ttl_s`` seconds.
    """

    def __init__(self, config, ttl_s: float = HISTORY_TTL_S, clock=time.monotonic) -> None:
        self.config = config
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[int, int]] = {}
        self._when: float | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator:
        """The two gauge families (prometheus-client Collector)."""
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            now = self.clock()
            if self._when is None or now - self._when >= self.ttl_s:
                self._cache = {
                    name: history_usage(Path(m.path) / m.history_dir)
                    for name, m in self.config.modules.items()
                    if m.history
                }
                self._when = now
            usage = dict(self._cache)
        size = GaugeMetricFamily(
            "backupd_history_bytes", "Bytes kept in the module's history folder", labels=["module"]
        )
        count = GaugeMetricFamily(
            "backupd_history_files", "Files kept in the module's history folder", labels=["module"]
        )
        for name, (nbytes, nfiles) in usage.items():
            size.add_metric([name], nbytes)
            count.add_metric([name], nfiles)
        return iter((size, count))


def history_usage(root: Path) -> tuple[int, int]:
    """``(bytes, files)`` of the non-directory entries under ``root``; (0, 0) if absent."""
    total = files = 0
    stack = [os.fspath(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
                    files += 1
        except OSError:
            continue
    return total, files


# ---------------------------------------------------------------- exporters


class MetricsExporter:
    """An HTTP ``/metrics`` endpoint serving ``registry`` from a daemon thread."""

    def __init__(self, address: tuple[str, int], registry, cleanup=None) -> None:
        from prometheus_client import start_http_server

        host, port = address
        try:
            self.httpd, self.thread = start_http_server(port, host, registry=registry)
        except OSError as exc:
            raise ConfigError(
                f"metrics address {host}:{port}: cannot listen: {exc.strerror}"
            ) from None
        self.registry = registry
        self._cleanup = cleanup
        self.port = self.httpd.server_port

    def close(self) -> None:
        """Stop serving; run the cleanup (the server's: remove the multiprocess dir)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None


def start_server_exporter(address: str, config, daemon=None) -> MetricsExporter:
    """``backupd serve --metrics-address``: multiprocess mode, collectors, HTTP endpoint.

    Args:
        address: ``HOST:PORT`` (see ``parse_address``).
        config: the DaemonConfig (modules whose history is measured).
        daemon: the DaemonServer, if any: compaction then also runs every
            COMPACT_INTERVAL_S in its loop.

    Raises:
        ConfigError: a bad address, or the port cannot be bound.
    """
    global _EXPORTER_PID
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    host_port = parse_address(address)
    path = Path(tempfile.mkdtemp(prefix="backupd-metrics-"))
    enable_server_metrics(path)
    files = CompactingCollector(path)
    registry = CollectorRegistry()
    registry.register(files)
    registry.register(HistoryCollector(config))
    from backupd.ops.verify_schedule import VerifyCollector

    registry.register(VerifyCollector((lambda: daemon.config) if daemon is not None else (lambda: config)))
    ProcessCollector(registry=registry)  # the listener's own CPU and memory

    def cleanup() -> None:
        global _EXPORTER_PID
        files.close()
        disable_server_metrics()
        shutil.rmtree(path, ignore_errors=True)
        _EXPORTER_PID = None
        _EXPORTER_SOCKETS.clear()

    try:
        exporter = MetricsExporter(host_port, registry, cleanup)
    except ConfigError:
        cleanup()
        raise
    _EXPORTER_PID = os.getpid()
    _EXPORTER_SOCKETS.append(exporter.httpd.socket)
    if daemon is not None:
        daemon.add_periodic(COMPACT_INTERVAL_S, files.compact)
    return exporter
