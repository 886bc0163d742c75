"""``MODULE@T``: a read-only module serving the tree of MODULE as it was at T.

Looked up when the module line names no module but ``BASE@T`` names one
(``rsync -a rsync://host/backup@2026-11-20T12:00/ ./restore/``,
``host::backup@yesterday/sub/``). Host rules, auth users and connection
slots are the base module's; after auth the view is laid out for this
session (``storage/snapshot.py``) and served through the normal sender with
the base module's filters and listing rules. It is read-only: a push is
refused, and history is off (nothing in it can change).

A push is refused where rsyncd refuses a push to a ``read only = yes``
module (main.c do_server_recv: ``ERROR: module is read only``, exit 1):
after the arguments, not with ``@ERROR`` before ``@RSYNCD: OK``, because
the direction (``--sender`` or not) only arrives with the arguments, after
the OK. Refusing earlier would refuse the pulls too. The message names the
view (``ERROR: module backup@T is a read-only snapshot view``) and every
client sees the exit code it sees for a read-only rsyncd module
(``roles/session.py``; tests/interop/test_snapshot_view_push.py).

Source: issue 12 (snapshot views).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from backupd.config.model import ModuleConfig
from backupd.errors import BackupdError, DaemonRefusal
from backupd.storage.catalog import at_bound, parse_instant
from backupd.storage.snapshot import materialize

SEPARATOR = "@"


def split_view_name(name: str, modules: dict[str, ModuleConfig]) -> tuple[ModuleConfig, str] | None:
    """(base module, T text) when ``name`` is ``BASE@T`` for a module BASE; else None."""
    base, sep, at = name.partition(SEPARATOR)
    if not sep or base not in modules:
        return None
    return modules[base], at


def open_view(module: ModuleConfig, at_text: str, session_id: str, log) -> tuple[ModuleConfig, Path]:
    """Lay out the view of ``module`` at T; returns (the view's module config, its scratch dir).

    Raises:
        DaemonRefusal: no catalog, T is not a time, or the view cannot be made
            (the reason goes to the log), sent as ``@ERROR`` before ``@RSYNCD: OK``.
    """
    if not (module.history and module.catalog):
        raise DaemonRefusal(f"module {module.name} keeps no version catalog: no snapshot views")
    when = parse_instant(at_text)
    if when is None:
        raise DaemonRefusal(f"snapshot view {module.name}@{at_text}: {at_text!r} is not a time "
                            "(ISO date or date-time, or e.g. 'yesterday')")
    try:
        path, entries = materialize(module, at_bound(when), session_id)
    except FileNotFoundError:
        raise DaemonRefusal(f"module {module.name} has no version catalog yet: no snapshot views") from None
    except (BackupdError, sqlite3.Error, OSError) as exc:
        log.error("snapshot view {}@{}: {}", module.name, at_text, exc)
        raise DaemonRefusal(f"snapshot view {module.name}@{at_text} failed, see the server log") from None
    log.info("snapshot view {}@{} = {:%Y-%m-%d %H:%M:%S}: {} entries", module.name, at_text, when, entries)
    # named as the client named it: its path arguments start with MODULE@T
    view = dataclasses.replace(module, name=f"{module.name}{SEPARATOR}{at_text}", path=path, read_only=True,
                               write_only=False, history=False, catalog=False)
    return view, path
