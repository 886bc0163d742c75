"""The pusher daemon (``backupd watch``) and the one-shot full sync (``backupd push``).

Wiring, per source: a :class:`SourceWatcher` feeds events into a buffer;
every ``FLUSH_S`` the buffer is coalesced and written, in one transaction per
target, into each target's durable queue (or, with HA, appended to the shared
journal, which the leader drains into its queues; what the journal does not
take is spilled to local disk, see spill.py). A :class:`TargetWorker`
per target pushes from its queue. Full syncs (at start, on schedule, on a
rescan, on a takeover) run the source's pre-sync command first, then are
owed by every target queue (durably) and run by the workers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from loguru import logger

from backupd.config.pusher_model import PusherConfig, SourceConfig, run_logs_dir
from backupd.errors import BackupdError
from backupd.pusher.coalesce import Change, Kind, PathEvent, coalesce, merge
from backupd.pusher.excludes import ExcludeRules
from backupd.pusher.heartbeat import HEARTBEAT_S, Heartbeat, write_heartbeat
from backupd.pusher.lease import RESCAN_KIND, Lease, bounded, database_errors
from backupd.pusher.metrics import PusherMetrics
from backupd.pusher.queue import TargetQueue
from backupd.pusher.source_state import Loss, SourceState, on_full_sync_done, on_loss, on_start
from backupd.pusher.spill import SpillStore, journal_with_spill
from backupd.pusher.state_store import StateStore, clear_running, mark_running, queue_path
from backupd.pusher.targets import (
    ExitClass,
    exit_text,
    full_sync_argv,
    run_command,
    run_rsync,
    write_list,
)
from backupd.pusher.watch import SourceWatcher
from backupd.pusher.worker import TargetWorker

FLUSH_S = 0.2  # events -> durable queue (or journal) at least this often
SCHEDULE_CHECK_S = 1.0


class SourceRuntime:
    """One source in the daemon: watcher, state machine, buffered events, its targets."""

    def __init__(self, pusher: Pusher, config: SourceConfig) -> None:
        self.pusher = pusher
        self.config = config
        self.label = os.fspath(config.path)
        self.root = os.fsencode(config.path)
        self.exclude = ExcludeRules(config.exclude)
        self.event_filter = ExcludeRules((*config.exclude, *config.watch_exclude))
        self.buffer: list[PathEvent] = []
        self.unsent: dict[bytes, Change] = {}  # coalesced, not yet durable (journal down)
        self.watcher: SourceWatcher | None = None
        row = pusher.store.load(config.path)
        self.machine = on_start(row.state if row else None, pusher.config.full_sync_at_start, pusher.unclean_start)
        self.last_full_request_ns = row.last_full_request_ns if row else None
        self.workers = [
            TargetWorker(pusher, self, t, TargetQueue(queue_path(pusher.config.state_dir, config, t)))
            for t in config.targets
        ]
        self.persist()

    def persist(self) -> None:
        """Persist the state machine and show it in the metrics."""
        self.pusher.store.save(self.config.path, self.machine.state, self.machine.reason, time.time_ns())
        self.pusher.metrics.show_state(self.label, self.machine.state)

    def on_event(self, event: PathEvent) -> None:
        """Watcher callback: buffer one event (flushed every FLUSH_S)."""
        self.buffer.append(event)

    def on_loss(self, loss: Loss) -> None:
        """Events were lost: RESCAN now; the rescan itself runs in the event loop."""
        self.machine = on_loss(self.machine, loss)
        self.persist()
        logger.warning("{}: {} -> RESCAN", self.label, loss.value)
        asyncio.get_running_loop().call_soon(self.pusher.spawn, self.rescan(loss))

    async def rescan(self, loss: Loss) -> None:
        """Re-watch the tree (watches may be missing), then owe a full sync everywhere."""
        if self.watcher is not None and loss is not Loss.WATCH_LIMIT:
            self.watcher.add_tree(b"")
        if self.pusher.lease is not None and not self.pusher.is_leader:
            await self.pusher.journal_rescan(self)
            return
        await self.request_full_sync(f"rescan: {loss.value}")

    async def request_full_sync(self, reason: str) -> None:
        """Run the pre-sync command, then owe a full sync on every target queue."""
        logger.info("{}: full sync requested ({})", self.label, reason)
        now = time.time_ns()
        self.last_full_request_ns = now
        self.pusher.store.full_requested(self.config.path, now)
        command = self.config.pre_sync_command
        if command:
            log = self.pusher.config.state_dir / f"pre-sync-{self.workers[0].key}.log"
            code = await run_command(command, log, self.pusher.config.full_sync_timeout_s)
            (logger.info if code == 0 else logger.warning)("{}: pre-sync command exit {}", self.label, code)
        for worker in self.workers:
            worker.queue.request_full()
            worker.wake.set()

    def target_full_synced(self, started_generation: int) -> None:
        """A worker finished a full sync; REALTIME once no target owes one."""
        if self.machine.state is SourceState.REALTIME or any(w.queue.full_owed() for w in self.workers):
            return
        before = self.machine.state
        self.machine = on_full_sync_done(self.machine, started_generation)
        if self.machine.state is not before:
            logger.info("{}: {} -> {}", self.label, before.value, self.machine.state.value)
            self.persist()

    def take_changes(self) -> dict[bytes, Change]:
        """The buffered events, coalesced (and anything not yet made durable)."""
        if self.buffer:
            coalesce(self.buffer, self.unsent)
            self.buffer.clear()
        changes, self.unsent = self.unsent, {}
        return changes

    def enqueue(self, changes: dict[bytes, Change]) -> None:
        """Write coalesced changes into every target queue and wake the workers."""
        now = time.time_ns()
        for worker in self.workers:
            worker.queue.add(changes, now)
            worker.wake.set()


class Pusher:
    """The ``backupd watch`` daemon for one :class:`PusherConfig`.

    Args:
        config: the pusher configuration.
        inotify_factory: makes each source's inotify object (tests inject faults).
        metrics: where to count (default: a fresh registry).
    """

    def __init__(self, config: PusherConfig, *, inotify_factory: Callable | None = None,
                 metrics: PusherMetrics | None = None) -> None:
        self.config = config
        self.inotify_factory = inotify_factory
        self.metrics = metrics or PusherMetrics()
        self.store = StateStore(config.state_dir)
        self.unclean_start = mark_running(config.state_dir)  # the previous run was killed or crashed
        self.lease = Lease(config.ha) if config.ha is not None else None
        # psycopg only with HA; without it no database call can fail, and `except ()` catches nothing
        self.db_errors: tuple[type[BaseException], ...] = database_errors() if config.ha is not None else ()
        self.spill = SpillStore(config.state_dir) if config.ha is not None else None
        self.epoch: int | None = None
        self.valid_until = 0.0
        self.journal_backlog: int | None = None  # journal rows of the group at the last count
        self.running: set[asyncio.Task] = set()
        self.tasks: set[asyncio.Task] = set()
        self.sources = [SourceRuntime(self, s) for s in config.sources]

    @property
    def is_leader(self) -> bool:
        """True without HA, or while this node holds the lease."""
        return self.lease is None or self.epoch is not None

    def may_push(self) -> bool:
        """True without HA; with HA while our lease is valid (minus a safety margin)."""
        if self.lease is None:
            return True
        margin = self.config.ha.lease_s / 6
        return self.epoch is not None and time.monotonic() < self.valid_until - margin

    def spawn(self, coro) -> asyncio.Task:
        """Run ``coro`` as a daemon task; its failure is logged."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("pusher task failed")

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Watch and push until ``stop`` is set; then release the lease and close."""
        try:
            self._start_watchers()
            for source in self.sources:
                for worker in source.workers:
                    self.spawn(worker.run())
            self.spawn(self._flush_loop())
            self.spawn(self._schedule_loop())
            self.spawn(self._heartbeat_loop())
            if self.lease is not None:
                self.spawn(self._ha_loop())  # the leader's takeover owes the full syncs
            else:
                self.metrics.is_leader.set(1)  # without HA this node always pushes
                for source in self.sources:
                    if source.machine.owes_full_sync:
                        self.spawn(source.request_full_sync(source.machine.reason or "start"))
            await stop.wait()
        finally:
            await self._shutdown()

    def _start_watchers(self) -> None:
        for source in self.sources:
            if not source.config.path.is_dir():
                raise BackupdError(f"source {source.label} is not a directory")
            if not self.config.realtime:
                continue
            inotify = self.inotify_factory() if self.inotify_factory else None
            source.watcher = SourceWatcher(source.config.path, source.event_filter, source.on_event,
                                           source.on_loss, inotify)
            source.watcher.start()
            self.spawn(source.watcher.run())
            logger.info("watching {} ({} directories)", source.label, len(source.watcher.wd_path))

    async def _shutdown(self) -> None:
        for task in list(self.tasks) + list(self.running):
            task.cancel()
        await asyncio.gather(*self.tasks, *self.running, return_exceptions=True)
        await self._final_flush()
        if self.lease is not None:
            if self.epoch is not None:
                try:
                    await self.lease.release(self.epoch)
                except self.db_errors:
                    pass
            await self.lease.close()
            self.spill.close()
        for source in self.sources:
            if source.watcher is not None:
                source.watcher.close()
            for worker in source.workers:
                worker.queue.close()
        self.store.close()
        clear_running(self.config.state_dir)

    async def _final_flush(self) -> None:
        try:
            await self.flush()
        except (*self.db_errors, OSError) as exc:
            logger.warning("last events not saved: {}", exc)

    # ------------------------------------------------------------ events -> queues

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                if self.lease is None:
                    await self.flush()
                else:  # a hung database must not hold events or the loop: bounded like every lease call
                    await bounded(self.flush(), self.config.ha.lease_s / 3, self.tasks)
                    if self.may_push():
                        await bounded(self.drain_journal(), self.config.ha.lease_s / 3, self.tasks)
            except TimeoutError:
                logger.warning("journal unavailable: no answer within {:.1f} s", self.config.ha.lease_s / 3)
                self._drop_lease_connection()
                await asyncio.sleep(1.0)
            except self.db_errors as exc:
                logger.warning("journal unavailable: {}", exc)
                await asyncio.sleep(1.0)
            self._update_metrics()

    async def flush(self) -> None:
        """Coalesce buffered events; write them to the queues (or the journal)."""
        for source in self.sources:
            if source.watcher is not None:
                source.watcher.tick()
            changes = source.take_changes()
            if self.lease is None:
                if changes:
                    source.enqueue(changes)
                continue
            # what fails (a database error, a timeout cancelling us) is spilled to local disk
            await journal_with_spill(self.spill, source.label, changes, self.lease.append)

    async def drain_journal(self) -> int:
        """Leader: move journal rows into the target queues, then delete them (fenced)."""
        rows = await self.lease.drain()
        if not rows:
            return 0
        by_source: dict[str, dict[bytes, Change]] = {}
        rescans: set[str] = set()
        for row in rows:
            if row.kind == RESCAN_KIND:
                rescans.add(row.source)
                continue
            changes = by_source.setdefault(row.source, {})
            changes[row.path] = merge(changes.get(row.path), Change(Kind(row.kind), row.is_dir, row.force))
        for source in self.sources:
            if source.label in by_source:
                source.enqueue(by_source[source.label])
            if source.label in rescans:
                self.spawn(source.request_full_sync("another node lost events"))
        if not await self.lease.delete_through(self.epoch, rows[-1].id):
            logger.warning("journal rows kept: our lease (epoch {}) is gone", self.epoch)
        return len(rows)

    async def journal_rescan(self, source: SourceRuntime) -> None:
        """Follower lost events: ask the leader for a full sync via the journal."""
        try:
            await self.lease.append_rescan(source.label)
        except self.db_errors as exc:
            logger.warning("rescan request not journaled: {}", exc)
            return
        source.machine = on_full_sync_done(source.machine, source.machine.generation)
        source.persist()

    # ------------------------------------------------------------ schedule, HA, metrics

    async def _schedule_loop(self) -> None:
        interval = self.config.full_sync_interval_s
        while True:
            await asyncio.sleep(SCHEDULE_CHECK_S)
            if not interval or not self.may_push():
                continue
            now = time.time_ns()
            for source in self.sources:
                last = source.last_full_request_ns or 0
                if (now - last) / 1e9 >= interval:
                    await source.request_full_sync("schedule")

    def _db_call_budget(self, now: float) -> float:
        """Seconds one lease step may take: a third of the lease, and never past our own step-down time.

        A database that hangs (a network partition) must not keep a leader
        pushing past ``valid_until - margin``: the step is cancelled there.
        """
        ha = self.config.ha
        budget = ha.lease_s / 3
        if self.epoch is not None:
            budget = min(budget, self.valid_until - ha.lease_s / 6 - now)
        return max(0.05, budget)

    async def _ha_loop(self) -> None:
        ha = self.config.ha
        while True:
            started = time.monotonic()
            try:
                await bounded(self._ha_step(started), self._db_call_budget(started), self.tasks)
            except TimeoutError:
                logger.warning("lease database did not answer within {:.1f} s", time.monotonic() - started)
                self._drop_lease_connection()
            except (*self.db_errors, OSError) as exc:
                logger.warning("lease database unavailable: {}", exc)
                self._drop_lease_connection()
            if self.epoch is not None and time.monotonic() >= self.valid_until - ha.lease_s / 6:
                self._step_down("lease not renewed in time")
            await asyncio.sleep(max(0.05, ha.lease_s / 3 - (time.monotonic() - started)))

    def _drop_lease_connection(self) -> None:
        """Forget the lease connection (its state is unknown); it is closed in the background."""
        self.lease.abandon(self.tasks)

    async def _ha_step(self, started: float) -> None:
        if self.epoch is None:
            epoch = await self.lease.try_acquire()
            if epoch is None:
                self.journal_backlog = await self.lease.backlog()
                return
            self.epoch, self.valid_until = epoch, started + self.config.ha.lease_s
            self.metrics.is_leader.set(1)
            logger.info("leader now (node {}, epoch {})", self.config.ha.node_id, epoch)
            await self.flush()
            await self.drain_journal()
            for source in self.sources:
                self.spawn(source.request_full_sync(f"takeover, epoch {epoch}"))
        elif await self.lease.renew(self.epoch):
            self.valid_until = started + self.config.ha.lease_s
            self.journal_backlog = await self.lease.backlog()
        else:
            self._step_down("lease taken by another node")

    async def _heartbeat_loop(self) -> None:
        """Rewrite the heartbeat file every HEARTBEAT_S (status and the HEALTHCHECK read it)."""
        while True:
            beat = self.heartbeat()
            try:
                write_heartbeat(self.config.state_dir, beat)
            except OSError as exc:
                logger.warning("heartbeat not written: {}", exc)
            if self.spill is not None:
                self.metrics.show_ha(beat.epoch, beat.journal_backlog,
                                     {k: v + self.spill.count(k) for k, v in beat.unjournaled.items()})
            await asyncio.sleep(HEARTBEAT_S)

    def heartbeat(self) -> Heartbeat:
        """This daemon now: pid, role, epoch, journal backlog, changes held in memory per source."""
        role = "none" if self.lease is None else ("leader" if self.epoch is not None else "standby")
        return Heartbeat(
            pid=os.getpid(), at_ns=time.time_ns(), role=role,
            node=self.config.ha.node_id if self.config.ha is not None else None,
            epoch=self.epoch, journal_backlog=self.journal_backlog,
            unjournaled={s.label: len(s.unsent) + len(s.buffer) for s in self.sources} if self.lease else {},
        )

    def _step_down(self, why: str) -> None:
        logger.warning("not leader any more (epoch {}): {}", self.epoch, why)
        self.epoch = None
        self.metrics.is_leader.set(0)
        for task in list(self.running):
            task.cancel()

    def _update_metrics(self) -> None:
        now = time.time_ns()
        for source in self.sources:
            for worker in source.workers:
                self.metrics.show_queue(source.label, worker.label, worker.queue.status(), now)


async def push_once(config: PusherConfig) -> int:
    """``backupd push``: pre-sync command and one full sync of every source to every target.

    Returns:
        0 if every run succeeded (exit 0 or 24), else the last failing rsync exit code.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    worst = 0
    for source in config.sources:
        if source.pre_sync_command:
            code = await run_command(source.pre_sync_command, config.state_dir / "push-pre-sync.log",
                                     config.full_sync_timeout_s)
            (logger.info if code == 0 else logger.warning)("{}: pre-sync command exit {}", source.path, code)
        exclude = ExcludeRules(source.exclude)
        exclude_file = None
        if exclude:
            exclude_file = write_list(config.state_dir / "push.exclude", exclude.anchored(os.fsencode(source.path)))
        for target in source.targets:
            seq_before = _last_seq(config, source, target)
            argv = full_sync_argv(config, source, target, exclude_file)
            logs = run_logs_dir(config)
            logs.mkdir(parents=True, exist_ok=True)
            result = await run_rsync(argv, logs / "push.rsync.log", config.full_sync_timeout_s)
            logger.info("full sync {} -> {}: {} files, {} bytes, {:.2f} s, exit {}", source.path, target.url,
                        result.files_sent, result.bytes_sent, result.seconds, exit_text(result.code))
            record_push(config, source, target, result, seq_before)
            if result.exit_class is not ExitClass.OK:
                logger.warning("{}", result.log_tail.strip())
                worst = result.code if result.code > 0 else 1
    return worst


def _last_seq(config: PusherConfig, source: SourceConfig, target) -> int:
    queue = TargetQueue(queue_path(config.state_dir, source, target))
    try:
        return queue.last_seq()
    finally:
        queue.close()


def record_push(config: PusherConfig, source: SourceConfig, target, result, seq: int) -> None:
    """Show a ``backupd push`` run in the target's queue status (LAST_SUCCESS, failures, last error).

    A successful run also settles what was queued before it started (``seq``)
    and any owed full sync, as a daemon full sync would.
    """
    queue = TargetQueue(queue_path(config.state_dir, source, target))
    try:
        now = time.time_ns()
        if result.exit_class is ExitClass.OK:
            queue.ack_through(seq)
            queue.clear_failing()
            queue.set(last_success_ns=now, last_full_ns=now, failures=0, last_error=None,
                      full_done=int(queue.get("full_requested", 0)))
        else:
            shown = list(result.errors) or result.log_tail.strip().splitlines()[-3:]
            queue.set(last_attempt_ns=now, failures=int(queue.get("failures", 0)) + 1,
                      last_error=f"push exit {exit_text(result.code)}: {' | '.join(shown)}"[:2000])
    finally:
        queue.close()
