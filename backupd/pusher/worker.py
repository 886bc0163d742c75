"""One target of one source: drains its durable queue, one rsync run per window.

Loop: while leader (always, without HA) -> owed full sync? run it -> queue
larger than ``max_pending``? owe a full sync instead -> otherwise wait until
the oldest pending change is ``delay_s`` old, plan a :class:`Batch` from the
whole pending set and run it. Failures back off (``retry_min_s`` doubling up
to ``retry_max_s``); three partial runs (exit 23/25) in a row turn into a full
sync. Each run is logged: paths, bytes, seconds, target, exit.

The fail queue: a partial run whose error lines each name a path
(``failpaths.py``) settles the rest of its batch and moves only those paths
to the queue's ``failing`` table; they are retried on their own (a batch of
just them, when due, backing off per path), so one path the target never
accepts does not hold back the others or escalate to full syncs. A full
sync failing only on such paths counts as done (the source leaves
INITIAL_SYNC/RESCAN) and keeps them failing.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from loguru import logger

from backupd.config.pusher_model import Target, run_logs_dir, target_key
from backupd.pusher.coalesce import Change, Kind, plan_batch
from backupd.pusher.failpaths import failing_paths, in_batch
from backupd.pusher.queue import TargetQueue
from backupd.pusher.targets import (
    ExitClass,
    RsyncResult,
    batch_argv,
    exit_text,
    full_sync_argv,
    run_rsync,
    write_list,
)

if TYPE_CHECKING:
    from backupd.pusher.daemon import Pusher, SourceRuntime

PARTIALS_BEFORE_FULL = 3
IDLE_CHECK_S = 1.0  # how often an idle worker looks at leadership and its queue
PROBE_S = 2.0  # an unreachable target is probed (TCP connect) this often during its backoff


class TargetWorker:
    """Pushes one source to one target from the target's own queue."""

    def __init__(self, pusher: Pusher, source: SourceRuntime, target: Target, queue: TargetQueue) -> None:
        self.pusher = pusher
        self.config = pusher.config
        self.source = source
        self.target = target
        self.queue = queue
        self.key = target_key(source.config, target)
        self.label = target.url
        self.wake = asyncio.Event()
        self.failures = int(queue.get("failures", 0))
        self.partials = 0
        self.retry_at = 0.0
        self.last_batch_start = 0.0
        self.full_generation = 0
        self.unreachable = False
        self.last_probe = 0.0
        state = pusher.config.state_dir
        self.files_from = state / f"{self.key}.files"
        self.excludes = state / f"{self.key}.exclude"
        logs = run_logs_dir(pusher.config)
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{self.key}.rsync.log"

    # ------------------------------------------------------------ loop

    async def run(self) -> None:
        """Work until cancelled.

        Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that
        lands as its timeout fires (the idle wait, the probe): the loop checks
        that it is being cancelled after every step, so a shutdown never hangs.
        """
        me = asyncio.current_task()
        while True:
            await self.step()
            if me is not None and me.cancelling():
                raise asyncio.CancelledError

    async def step(self) -> None:
        """One decision of the loop (tests drive it directly)."""
        now = time.monotonic()
        if not self.pusher.may_push():
            await self._idle(IDLE_CHECK_S)
        elif now < self.retry_at:
            await asyncio.sleep(min(self.retry_at - now, IDLE_CHECK_S))
            if self.unreachable and time.monotonic() - self.last_probe >= PROBE_S and await self._probe():
                logger.info("{} answers again: retrying now", self.label)
                self.retry_at = 0.0
        elif owed := self.queue.full_owed():
            await self.full_sync(owed)
        elif due := self.queue.failing_due(time.time_ns()):
            await self.retry_failing(due)
        elif (depth := self.queue.depth()) > self.config.max_pending:
            logger.warning("{}: {} paths pending (> {}): a full sync instead", self.label, depth,
                           self.config.max_pending)
            self.queue.request_full()
        elif depth == 0:
            await self._idle(IDLE_CHECK_S)
        elif (wait := self._window_wait()) > 0:
            await asyncio.sleep(wait)
        else:
            await self.push_batch()

    async def _idle(self, timeout_s: float) -> None:
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), timeout_s)
        except TimeoutError:
            pass

    def _window_wait(self) -> float:
        """Seconds until this window closes: ``delay_s`` after its oldest change and the last run."""
        oldest = self.queue.oldest_ns() or time.time_ns()
        by_age = self.config.delay_s - (time.time_ns() - oldest) / 1e9
        by_run = self.config.delay_s - (time.monotonic() - self.last_batch_start)
        return max(by_age, by_run, 0.0)

    # ------------------------------------------------------------ runs

    async def push_batch(self) -> RsyncResult | None:
        """Plan a batch from everything pending and run it; None if nothing to send."""
        changes, seqs = self.queue.snapshot()
        batch = plan_batch(changes)
        if not batch.files:
            self.queue.ack(batch.covered, seqs)
            return None
        self.last_batch_start = time.monotonic()
        exclude_file = None
        if batch.recursive and self.source.exclude:
            tops = [p for p in batch.files if changes[p].kind is Kind.TREE]
            exclude_file = write_list(self.excludes, self.source.exclude.anchored(self.source.root, tops))
        write_list(self.files_from, batch.files)
        argv = batch_argv(self.config, self.source.config, self.target, batch, self.files_from, exclude_file)
        result = await self._run(argv, "batch", None)
        if result is None:
            return None
        self.pusher.metrics.files.labels(self.source.label, self.label).inc(len(batch.files))
        logger.info(
            "batch to {}: {} paths ({} updated, {} trees, {} deleted{}), {} bytes, {:.2f} s, exit {}",
            self.label, len(batch.files), batch.updates, batch.trees, batch.deletes,
            f", {len(batch.deferred)} dirs deferred" if batch.deferred else "",
            result.bytes_sent, result.seconds, exit_text(result.code),
        )
        if result.exit_class is ExitClass.OK:
            self.queue.ack(batch.covered, seqs)
            self.queue.clear_failing(batch.covered)
            self._succeeded()
        elif not self._settle_partial(result, batch.files, batch.covered, changes, seqs):
            self._failed(result, "batch")
        return result

    async def retry_failing(self, due: dict[bytes, Change]) -> RsyncResult | None:
        """Retry the fail queue's due paths on their own, in one run."""
        batch = plan_batch(due)
        write_list(self.files_from, batch.files)
        argv = batch_argv(self.config, self.source.config, self.target, batch, self.files_from, None)
        result = await self._run(argv, "retry", None)
        if result is None:
            return None
        logger.info("retry of {} failing paths to {}: {:.2f} s, exit {}", len(batch.files), self.label,
                    result.seconds, exit_text(result.code))
        if result.exit_class is ExitClass.OK:
            self.queue.clear_failing(due)
            self._succeeded()
        elif result.exit_class is not ExitClass.PARTIAL:
            self._failed(result, "retry")  # the target, not the paths: the worker backs off
        elif not self._settle_partial(result, batch.files, batch.covered, due, {}):
            line = (list(result.errors) or [f"exit {exit_text(result.code)}"])[0]
            self.queue.fail({p: (c, line) for p, c in due.items()}, {}, time.time_ns(), self._backoff)
        return result

    def _settle_partial(self, result: RsyncResult, files, covered, changes: dict[bytes, Change],
                        seqs: dict[bytes, int]) -> bool:
        """A partial run that names its failing paths: settle the rest, fail queue those. False if not."""
        if result.exit_class is not ExitClass.PARTIAL:
            return False
        failed = failing_paths(result.errors, in_batch(files))
        if failed is None:
            return False
        rest = [p for p in covered if p not in failed]
        self.queue.ack(rest, seqs)
        self.queue.clear_failing(rest)
        self.queue.fail({p: (self._change_of(p, changes), line) for p, line in failed.items()}, seqs,
                        time.time_ns(), self._backoff)
        self._succeeded()
        logger.warning("{}: {} paths failed, kept in the fail queue: {}", self.label, len(failed),
                       " | ".join(list(failed.values())[:5]))
        return True

    def _change_of(self, path: bytes, changes: dict[bytes, Change]) -> Change:
        """The change to retry a failing path with (a path below a sent tree: its own update)."""
        if path in changes:
            return changes[path]
        return Change(Kind.UPDATE, os.path.isdir(os.path.join(self.source.root, path)))

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row: retry_min_s doubling up to retry_max_s."""
        return min(self.config.retry_max_s, self.config.retry_min_s * 2 ** (max(failures, 1) - 1))

    async def full_sync(self, owed: int) -> RsyncResult | None:
        """One full sync settling full-sync request ``owed`` and everything queued before it."""
        seq = self.queue.last_seq()
        generation = self.source.machine.generation
        exclude_file = None
        if self.source.exclude:
            exclude_file = write_list(self.excludes, self.source.exclude.anchored(self.source.root))
        argv = full_sync_argv(self.config, self.source.config, self.target, exclude_file)
        logger.info("full sync of {} to {} started", self.source.label, self.label)
        result = await self._run(argv, "full", self.config.full_sync_timeout_s)
        if result is None:
            return None
        logger.info("full sync to {}: {} files sent, {} bytes, {:.2f} s, exit {}", self.label,
                    result.files_sent, result.bytes_sent, result.seconds, exit_text(result.code))
        failed = None
        if result.exit_class is ExitClass.PARTIAL:
            failed = failing_paths(result.errors, self._in_source)
        if result.exit_class is ExitClass.OK or failed:
            self.queue.ack_through(seq)
            self.queue.set(full_done=owed, last_full_ns=time.time_ns())
            self.queue.clear_failing(keep=failed or ())
            if failed:
                self.queue.fail({p: (self._change_of(p, {}), line) for p, line in failed.items()}, {},
                                time.time_ns(), self._backoff)
                logger.warning("full sync to {}: done but for {} failing paths: {}", self.label, len(failed),
                               " | ".join(list(failed.values())[:5]))
            self._succeeded()
            self.source.target_full_synced(generation)
        else:
            self._failed(result, "full sync")
        return result

    def _in_source(self, path: bytes) -> bool:
        """``known`` for a full sync: the path exists in the source."""
        return os.path.lexists(os.path.join(self.source.root, path))

    async def _run(self, argv: list[str], kind: str, timeout_s: float | None) -> RsyncResult | None:
        """Run rsync unless leadership is gone; None when it could not run or was aborted."""
        if not self.pusher.may_push():
            return None
        self.queue.set(last_attempt_ns=time.time_ns())
        task = asyncio.ensure_future(run_rsync(argv, self.log_path, timeout_s))
        self.pusher.running.add(task)
        try:
            result = await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            logger.warning("{} to {} aborted: leadership lost", kind, self.label)
            return None
        except OSError as exc:
            result = RsyncResult(127, 0.0, 0, 0, f"cannot run {argv[0]}: {exc}")
        finally:
            self.pusher.running.discard(task)
        outcome = "ok" if result.exit_class is ExitClass.OK else result.exit_class.value
        self.pusher.metrics.runs.labels(self.source.label, self.label, kind, outcome).inc()
        self.pusher.metrics.bytes_sent.labels(self.source.label, self.label).inc(result.bytes_sent)
        return result

    async def _probe(self) -> bool:
        """True if the target's daemon port accepts a TCP connection (within 2 s)."""
        self.last_probe = time.monotonic()
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.target.host.strip("[]"), self.target.port), 2.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    def _succeeded(self) -> None:
        self.unreachable = False
        self.failures = self.partials = 0
        self.retry_at = 0.0
        self.queue.set(last_success_ns=time.time_ns(), failures=0, last_error=None)

    def _failed(self, result: RsyncResult, what: str) -> None:
        self.failures += 1
        if result.exit_class is ExitClass.PARTIAL:
            self.partials += 1
            if self.partials >= PARTIALS_BEFORE_FULL:
                logger.warning("{}: {} partial runs in a row: a full sync next", self.label, self.partials)
                self.partials = 0
                self.queue.request_full()
        delay = self._backoff(self.failures)
        self.unreachable = result.exit_class is ExitClass.UNREACHABLE
        self.last_probe = time.monotonic()
        if result.exit_class is ExitClass.FATAL:
            delay = self.config.retry_max_s
        self.retry_at = time.monotonic() + delay
        shown = list(result.errors) or result.log_tail.strip().splitlines()[-3:]
        error = f"{what} exit {exit_text(result.code)}: {' | '.join(shown)}"
        self.queue.set(failures=self.failures, last_error=error[:2000])
        logger.warning("{} to {} failed ({} in a row), retry in {:.1f} s: {}", what, self.label,
                       self.failures, delay, error)

    def status_label(self) -> str:
        """``source -> target`` for messages."""
        return f"{os.fspath(self.source.config.path)} -> {self.label}"
