"""The daemon's scheduled verify (``verify interval``) and the metrics of each module's last run.

``verify_job`` is a job for ``DaemonServer.add_periodic``, called every
``VERIFY_CHECK_S`` seconds (``BACKUPD_VERIFY_CHECK_S`` in the environment
overrides it). A module is due when its ``verify interval`` (0: never) has
passed since its last run (the catalog's meta ``verify.last``, so a restart
does not re-run it at once; a module never verified runs at the first
check). Due modules are verified in a detached grandchild process, at the
lowest CPU priority (``nice 19``, which the I/O scheduler follows), so the
listener and the sessions never wait on it; one run per module at a time
(an ``flock`` on ``verify.lock`` beside the catalog). The run reads the
catalog's rows in one query, then hashes each stored version with no
catalog lock held (``storage/verify.py``): sessions keep committing.

Every finding is logged (``verify module M: MISMATCH path (stored): ...``,
the first ``MAX_FINDINGS_LOGGED``), then one summary line, and the run's
figures are written to the catalog meta. ``VerifyCollector`` serves them on
``/metrics``: ``backupd_verify_last_run_timestamp_seconds``,
``..._duration_seconds``, ``..._versions``, ``..._bytes``,
``..._mismatches`` and ``..._missing``, per module.

Source: issue 12 (verify on a schedule, metrics for the last run).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from loguru import logger

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.errors import BackupdError
from backupd.storage.catalog import Catalog, module_catalog_file

VERIFY_CHECK_S = float(os.environ.get("BACKUPD_VERIFY_CHECK_S") or 60.0)
LAST_KEY = "verify.last"
LOCK_NAME = "verify.lock"
MAX_FINDINGS_LOGGED = 1000
COLLECT_TTL_S = 5.0
FIGURES = (  # record key, metric suffix, help
    ("finished", "timestamp_seconds", "When the last verify run ended (Unix time)"),
    ("seconds", "duration_seconds", "How long the last verify run took"),
    ("checked", "versions", "Stored versions the last verify run re-read"),
    ("bytes", "bytes", "Bytes the last verify run re-read"),
    ("mismatches", "mismatches", "Versions whose bytes differ from the catalog's checksum"),
    ("missing", "missing", "Versions the catalog lists whose stored copy is gone or unreadable"),
)


def last_run(module: ModuleConfig) -> dict | None:
    """The record of ``module``'s last verify run (see :func:`run_verify`), or None."""
    path = module_catalog_file(module)
    if not path.exists():
        return None
    try:
        with Catalog(path, readonly=True) as catalog:
            text = catalog.meta(LAST_KEY)
    except (sqlite3.Error, OSError):
        return None
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def run_record(result, started: float, finished: float, seconds: float) -> dict:
    """The stored figures of a ``VerifyResult`` (a wrong type counts as missing: the version is gone)."""
    return {"started": started, "finished": finished, "seconds": round(seconds, 3), "checked": result.checked,
            "bytes": result.bytes, "mismatches": result.count("mismatch"),
            "missing": result.count("missing") + result.count("type"), "findings": len(result.findings)}


def store_run(module: ModuleConfig, record: dict) -> None:
    """Write a run's record to the catalog meta (the CLI's runs too).

    Raises:
        sqlite3.Error, OSError: the catalog cannot be written.
    """
    with Catalog(module_catalog_file(module)) as catalog:
        catalog.set_meta(LAST_KEY, json.dumps(record))


def run_verify(module: ModuleConfig, *, clock: Callable[[], float] = time.time) -> dict | None:
    """Verify ``module`` now, log its findings and store the record; None if another run holds the lock.

    Returns:
        ``{"started", "finished"`` (Unix s), ``"seconds", "checked", "bytes",
        "mismatches", "missing", "findings"`` (count)``}``.

    Raises:
        StorageError: the module cannot be read; sqlite3.Error: nor its catalog.
    """
    from backupd.storage.tree import ModuleTree
    from backupd.storage.verify import verify_module

    db = module_catalog_file(module)
    with open(db.parent / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("verify of module {}: the previous run is still going, skipped", module.name)
            return None
        started, t0 = clock(), time.monotonic()
        with Catalog(db, readonly=True) as catalog, ModuleTree(module.path, module=module.name) as tree:
            result = verify_module(tree, catalog)
        seconds = time.monotonic() - t0
        record = run_record(result, started, clock(), seconds)
        store_run(module, record)
    for f in result.findings[:MAX_FINDINGS_LOGGED]:
        logger.warning("verify module {}: {} {} ({}): {}", module.name, f.kind.upper(), os.fsdecode(f.path),
                       os.fsdecode(f.stored), f.detail)
    (logger.warning if result.findings else logger.info)(
        "verify module {}: {} versions, {} bytes in {:.1f} s: {} mismatches, {} missing", module.name,
        record["checked"], record["bytes"], seconds, record["mismatches"], record["missing"])
    return record


def verify_modules(modules: Sequence[ModuleConfig]) -> None:
    """One scheduled pass: each module in turn; a module that fails is logged and the others still run."""
    for module in modules:
        try:
            run_verify(module)
        except (BackupdError, sqlite3.Error, OSError) as exc:
            logger.error("verify of module {} failed: {}", module.name, exc)


def due_modules(config: DaemonConfig, now: float, started: dict[str, float]) -> list[ModuleConfig]:
    """Modules whose ``verify interval`` has passed since their last run (stored, or started here)."""
    due = []
    for module in config.modules.values():
        if module.verify_interval_s <= 0 or not (module.history and module.catalog):
            continue
        if now - started.get(module.name, float("-inf")) < module.verify_interval_s:
            continue
        if not module_catalog_file(module).exists():
            continue
        record = last_run(module)
        last = record.get("finished") if record else None
        if isinstance(last, int | float) and now - last < module.verify_interval_s:
            continue
        due.append(module)
    return due


def verify_job(config: DaemonConfig | Callable[[], DaemonConfig], listeners: Sequence = (), *,
               clock: Callable[[], float] = time.time,
               spawn: Callable[[Callable[[], None]], None] | None = None) -> Callable[[], None]:
    """A job for ``DaemonServer.add_periodic``: start a background verify of the due modules.

    ``config`` may be a callable giving the configuration in force (SIGHUP).
    ``spawn`` (tests) runs the pass some other way than a detached process.
    """
    from backupd.ops.retention import detached

    started: dict[str, float] = {}
    run = spawn or (lambda work: detached(work, listeners, "scheduled verify", nice=19))

    def job() -> None:
        now = clock()
        due = due_modules(config() if callable(config) else config, now, started)
        if not due:
            return
        for module in due:
            started[module.name] = now
        run(lambda: verify_modules(due))

    return job


class VerifyCollector:
    """The last verify run of each module with a ``verify interval`` or a stored run, read on scrape.

    Args:
        config: a callable giving the DaemonConfig in force.
        ttl_s: the catalog metas are re-read at most this often.
    """

    def __init__(self, config: Callable[[], DaemonConfig], ttl_s: float = COLLECT_TTL_S) -> None:
        self.config = config
        self.ttl_s = ttl_s
        self._cache: dict[str, dict] = {}
        self._when: float | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator:
        """One gauge family per figure (prometheus-client Collector)."""
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            now = time.monotonic()
            if self._when is None or now - self._when >= self.ttl_s:
                self._cache = {m.name: r for m in self.config().modules.values()
                               if m.history and m.catalog and (r := last_run(m)) is not None}
                self._when = now
            records = dict(self._cache)
        for key, suffix, text in FIGURES:
            family = GaugeMetricFamily(f"backupd_verify_last_run_{suffix}", text, labels=["module"])
            for name, record in records.items():
                value = record.get(key)
                if isinstance(value, int | float):
                    family.add_metric([name], value)
            yield family


__all__ = ["VerifyCollector", "due_modules", "last_run", "run_record", "run_verify", "store_run", "verify_job",
           "verify_modules"]
