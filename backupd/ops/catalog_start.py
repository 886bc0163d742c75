"""On start: each module's catalog reconciled with its tree, and owned by the module's user.

A push killed mid-session leaves the tree ahead of the catalog (its last
batch never committed); ``reconcile_module`` repairs each difference and
every repair is logged. The walk is skipped when the last daemon stopped
cleanly and no writer was left unfinished (``storage/catalog_state.py``):
``mark_clean_shutdown`` records the clean stop. A root server whose module has a ``uid``/``gid``
hands the module's catalog directory to those ids, as the sessions write
it after switching to them.

Source: issue 12 ("on start, catalog and tree are reconciled").
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from loguru import logger

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.errors import BackupdError
from backupd.storage.catalog import Catalog, module_catalog_file
from backupd.storage.catalog_state import CLEAN, RUNNING, STATE_KEY, marks_dir, start_check
from backupd.storage.reconcile import reconcile_module
from backupd.storage.snapshot import discard_all


def reconcile_all(config: DaemonConfig) -> dict[str, int | None]:
    """Reconcile every module with history and a catalog; returns repairs per module.

    A module whose catalog was left by a clean shutdown with no unfinished
    writer is not walked (``catalog_state.start_check``; None in the result).
    Each catalog is then marked ``running`` until :func:`mark_clean_shutdown`.
    A module that fails is logged and skipped (its sessions still run; their
    catalog writes are retried per session).
    """
    done: dict[str, int | None] = {}
    for module in config.modules.values():
        if not (module.history and module.catalog) or not Path(module.path).is_dir():
            continue
        discard_all(module)  # snapshot views of sessions that were killed
        try:
            done[module.name] = _start_module(module)
            _hand_over(module)
        except (BackupdError, sqlite3.Error, OSError) as exc:
            logger.error("module {}: catalog not reconciled: {}", module.name, exc)
            continue
    return done


def _start_module(module: ModuleConfig) -> int | None:
    """Reconcile one module in full, or not at all when its catalog can be trusted; mark it running."""
    db = module_catalog_file(module)
    state = _read_state(db)
    why = start_check(db, state)
    if why is None:
        logger.info("module {}: catalog left clean by the last shutdown: reconcile skipped", module.name)
        repairs = None
    else:
        plan = reconcile_module(module, log=logger.warning)   # and clears the marks of dead writers
        repairs = len(plan.repairs)
        logger.info("module {}: catalog reconciled ({}; {} live, {} history entries, repairs: {})", module.name,
                    why, plan.live_entries, plan.history_entries, plan.counts() or "none")
    with Catalog(db) as catalog:
        catalog.set_meta(STATE_KEY, RUNNING)
    marks_dir(db).mkdir(mode=0o700, exist_ok=True)   # made here, so _hand_over gives it to the module's uid
    return repairs


def _read_state(db: Path) -> str | None:
    if not db.exists():
        return None
    with Catalog(db) as catalog:
        return catalog.meta(STATE_KEY)


def mark_clean_shutdown(config: DaemonConfig, started: dict[str, int | None]) -> None:
    """On a clean stop (sessions ended): mark each catalog reconciled at start ``clean``.

    Only modules that still keep a catalog: one switched off by a reload
    was written without it and must be walked at the next start.
    """
    for name in started:
        module = config.modules.get(name)
        if module is None or not (module.history and module.catalog):
            continue
        try:
            with Catalog(module_catalog_file(module)) as catalog:
                catalog.set_meta(STATE_KEY, CLEAN)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("module {}: clean shutdown not recorded in the catalog: {}", module.name, exc)


def _hand_over(module: ModuleConfig) -> None:
    """chown the catalog directory and its files to the session's uid/gid (root only; nobody/nogroup by default)."""
    if os.geteuid() != 0:
        return
    from backupd.transport.privileges import session_identity

    ids = session_identity(module.uid, module.gid, as_root=True)
    folder = module_catalog_file(module).parent
    uid = -1 if ids.uid is None else ids.uid
    gid = -1 if ids.gid is None else ids.gid
    for path in (folder, *folder.iterdir()):
        os.chown(path, uid, gid, follow_symlinks=False)
