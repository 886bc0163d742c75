"""The daemon's own purge: each module's history pruned to its retention once a day.

``prune_all_modules`` does one pass (plan + apply per module, a log line
each). ``daily_prune_job`` wraps it for ``DaemonServer.add_periodic``: the
job is cheap to call often; once per local calendar day it starts the pass
in a detached process (double fork), so the listener never waits on a
large delete and no zombie is left behind. The listener calls it every
``PRUNE_CHECK_S`` seconds (``BACKUPD_PRUNE_CHECK_S`` in the environment
overrides it), so the first pass runs that long after the start and the
next one soon after local midnight.

Source: design.md §1 "Purge"; storage/prune.py for what is removed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import date, datetime

from loguru import logger

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.errors import StorageError
from backupd.storage.catalog import module_catalog_file
from backupd.storage.prune import PruneResult, apply_prune, plan_prune

PRUNE_CHECK_S = float(os.environ.get("BACKUPD_PRUNE_CHECK_S") or 60.0)   # "has the day changed?"


def prune_module(module: ModuleConfig, now: datetime, keep_days: int | None = None) -> PruneResult | None:
    """Prune one module's history to ``keep_days`` (default: its own setting).

    Returns None when the module keeps no history or keeps it forever.

    Raises:
        StorageError: the module or its history folder cannot be read (a
            symlinked history folder is refused: PathEscape).
    """
    days = module.history_keep_days if keep_days is None else keep_days
    if not module.history or days <= 0:
        return None
    plan = plan_prune(module.path, now, days, history_dir=module.history_dir, module=module.name,
                      catalog_file=module_catalog_file(module) if module.catalog else None)
    return apply_prune(plan)


def prune_all_modules(config: DaemonConfig, now: datetime) -> dict[str, PruneResult]:
    """One retention pass over every module with history and a retention; logs each.

    A module that fails is logged and skipped; the others still run.
    Returns module name -> what was removed.
    """
    results: dict[str, PruneResult] = {}
    for module in config.modules.values():
        try:
            result = prune_module(module, now)
        except (StorageError, OSError) as exc:
            logger.warning("prune of module {} failed: {}", module.name, exc)
            continue
        if result is None:
            continue
        results[module.name] = result
        for error in result.errors:
            logger.warning("prune of module {}: {}", module.name, error)
        if result.removed:
            logger.info("pruned module {}: {} day folders, {} files, {} bytes (keep {} days)",
                        module.name, len(result.removed), result.files, result.size, module.history_keep_days)
    return results


def daily_prune_job(config: DaemonConfig | Callable[[], DaemonConfig], listeners: Sequence[socket.socket] = (), *,
                    clock: Callable[[], datetime] = datetime.now,
                    spawn: Callable[[Callable[[], None]], None] | None = None) -> Callable[[], None]:
    """A job for ``DaemonServer.add_periodic``: prune every module once per local day.

    The first call prunes; later calls prune again only when the local date
    has changed. The pass runs in a detached grandchild (listening sockets
    closed there), unless ``spawn`` (tests) runs it some other way.
    ``config`` may be a callable giving the configuration in force (it
    changes on SIGHUP).
    """
    last: list[date | None] = [None]
    run = spawn or (lambda work: detached(work, listeners, "daily prune"))

    def job() -> None:
        now = clock()
        if last[0] == now.date():
            return
        last[0] = now.date()
        current = config() if callable(config) else config
        run(lambda: prune_all_modules(current, now))

    return job


def detached(work: Callable[[], None], listeners: Sequence[socket.socket], label: str, *, nice: int = 0) -> None:
    """Run ``work`` in a grandchild process; the child exits at once and is reaped here.

    The grandchild closes the listening sockets, lowers its priority by
    ``nice`` and logs a failure as ``<label> failed``.
    """
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    code = 1
    try:
        if os.fork() == 0:
            for sock in listeners:
                sock.close()
            from backupd.ops import metrics

            metrics.after_fork()  # the metrics port must not outlive the listener in us
            if nice:
                os.nice(nice)
            work()
            code = 0
        else:
            code = 0
    except BaseException:
        logger.exception("{} failed", label)
    finally:
        logger.complete()
        os._exit(code)
