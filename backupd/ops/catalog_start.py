"""On start: each module's catalog reconciled with its tree, and owned by the module's user.

A push killed mid-session leaves the tree ahead of the catalog (its last
batch never committed); ``reconcile_module`` repairs each difference and
every repair is logged. A root server whose module has a ``uid``/``gid``
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
from backupd.storage.catalog import module_catalog_file
from backupd.storage.reconcile import reconcile_module
from backupd.storage.snapshot import discard_all


def reconcile_all(config: DaemonConfig) -> dict[str, int]:
    """Reconcile every module with history and a catalog; returns repairs per module.

    A module that fails is logged and skipped (its sessions still run; their
    catalog writes are retried per session).
    """
    done = {}
    for module in config.modules.values():
        if not (module.history and module.catalog) or not Path(module.path).is_dir():
            continue
        discard_all(module)  # snapshot views of sessions that were killed
        try:
            plan = reconcile_module(module, log=logger.warning)
            _hand_over(module)
        except (BackupdError, sqlite3.Error, OSError) as exc:
            logger.error("module {}: catalog not reconciled: {}", module.name, exc)
            continue
        done[module.name] = len(plan.repairs)
        logger.info("module {}: catalog reconciled ({} live, {} history entries, repairs: {})", module.name,
                    plan.live_entries, plan.history_entries, plan.counts() or "none")
    return done


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
