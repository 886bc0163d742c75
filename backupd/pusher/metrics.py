"""Prometheus metrics of the pusher, in a registry of its own (one per daemon).

Labels: ``source`` (the directory) and ``target`` (its URL). ``backupd watch``
serves them over HTTP when ``metrics.port`` is set; ``backupd status`` shows
the same numbers from the state files.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from backupd.pusher.queue import QueueStatus
from backupd.pusher.source_state import SourceState

_PAIR = ("source", "target")


class PusherMetrics:
    """The gauges and counters of one pusher; ``registry`` is what an exporter serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.queue_depth = Gauge(
            "backupd_pusher_queue_depth", "Paths waiting to be pushed to a target.", _PAIR, registry=reg
        )
        self.lag_seconds = Gauge(
            "backupd_pusher_lag_seconds", "Age of the oldest change not yet on the target.", _PAIR, registry=reg
        )
        self.last_success = Gauge(
            "backupd_pusher_last_success_timestamp_seconds",
            "Unix time of the last successful rsync run to a target.", _PAIR, registry=reg,
        )
        self.full_sync_owed = Gauge(
            "backupd_pusher_full_sync_owed", "1 while a full sync to a target is owed.", _PAIR, registry=reg
        )
        self.failures = Gauge(
            "backupd_pusher_consecutive_failures", "Failed rsync runs in a row to a target.", _PAIR, registry=reg
        )
        self.failing = Gauge(
            "backupd_pusher_failing_paths", "Paths in a target's fail queue (retried on their own).", _PAIR,
            registry=reg,
        )
        self.failing_path = Gauge(
            "backupd_pusher_failing_path_failures",
            "Failed runs of one failing path (the first ones), with its last error line.",
            (*_PAIR, "path", "error"), registry=reg,
        )
        self._shown_failing: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self.source_state = Gauge(
            "backupd_pusher_source_state", "1 for the state a source is in.", ("source", "state"), registry=reg
        )
        self.is_leader = Gauge("backupd_pusher_is_leader", "1 while this pusher may push (HA leader).", registry=reg)
        self.lease_epoch = Gauge("backupd_pusher_lease_epoch", "HA lease epoch while leader, else 0.", registry=reg)
        self.journal_backlog = Gauge(
            "backupd_pusher_journal_backlog", "Rows in the HA group's journal at the last count.", registry=reg
        )
        self.unjournaled = Gauge(
            "backupd_pusher_unjournaled", "Changes of a source not in the HA journal yet (memory + spill).",
            ("source",), registry=reg,
        )
        self.runs = Counter(
            "backupd_pusher_rsync_runs", "rsync runs by kind (batch, full) and result.",
            (*_PAIR, "kind", "result"), registry=reg,
        )
        self.files = Counter("backupd_pusher_batch_paths", "Paths listed in batches.", _PAIR, registry=reg)
        self.bytes_sent = Counter("backupd_pusher_bytes_sent", "Bytes rsync sent.", _PAIR, registry=reg)

    def show_queue(self, source: str, target: str, status: QueueStatus, now_ns: int) -> None:
        """Set a target's gauges from its queue status."""
        self.queue_depth.labels(source, target).set(status.depth)
        lag = (now_ns - status.oldest_ns) / 1e9 if status.oldest_ns else 0.0
        self.lag_seconds.labels(source, target).set(max(lag, 0.0))
        if status.last_success_ns:
            self.last_success.labels(source, target).set(status.last_success_ns / 1e9)
        self.full_sync_owed.labels(source, target).set(1 if status.full_owed else 0)
        self.failures.labels(source, target).set(status.failures)
        self.failing.labels(source, target).set(status.failing)
        shown = {(path, error) for path, _n, error in status.failing_paths}
        for gone in self._shown_failing.get((source, target), set()) - shown:
            self.failing_path.remove(source, target, *gone)
        for path, failures, error in status.failing_paths:
            self.failing_path.labels(source, target, path, error).set(failures)
        self._shown_failing[(source, target)] = shown

    def show_ha(self, epoch: int | None, backlog: int | None, unjournaled: dict[str, int]) -> None:
        """Set the HA gauges: the epoch (0 when not leader), the journal backlog, un-journaled changes per source."""
        self.lease_epoch.set(epoch or 0)
        if backlog is not None:
            self.journal_backlog.set(backlog)
        for source, count in unjournaled.items():
            self.unjournaled.labels(source).set(count)

    def show_state(self, source: str, state: SourceState) -> None:
        """Set the one-hot state gauge of a source."""
        for each in SourceState:
            self.source_state.labels(source, each.value).set(1 if each is state else 0)

    def serve(self, address: str, port: int):
        """Start the HTTP exporter (a daemon thread); returns the server."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server
