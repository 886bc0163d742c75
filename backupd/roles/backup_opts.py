"""The client's ``--backup``, ``--backup-dir`` and ``--suffix`` for a push (rsync options.c, main.c do_recv).

With history on, ``--backup`` folds into history and only the backup dir is
checked; with it off a :class:`BackupPolicy` keeps each replaced or deleted
version as stock rsyncd does (storage/backup.py).
"""

from __future__ import annotations

import os
import stat

from backupd.errors import ExitCode, RsyncError
from backupd.roles.push import PushState, join_path, sanitize_path
from backupd.roles.verbosity import BackupReporter, backup_dir_line, backup_dir_shown
from backupd.storage.backup import BackupPolicy
from backupd.storage.fsops import split_path


def backup_policy(state: PushState, module, send=None) -> BackupPolicy:
    """The client's ``--backup`` for a module without history (rsync options.c, main.c do_recv).

    ``--backup-dir`` is sanitized into the module: absolute is from the
    module root, relative from the destination dir (the receiver's cwd).
    The suffix is ``~``, or none with a backup dir, unless ``--suffix`` is given.
    At -vv (``state.verbosity`` 2) ``send`` gets rsync's INFO BACKUP lines.

    Raises:
        RsyncError: the backup dir exists and is not a directory (exit 1, as rsyncd's).
    """
    opts = state.opts
    rel = check_backup_dir(state)
    backup_dir = split_path(rel, module.name) if rel is not None else None
    suffix = opts.suffix if opts.suffix is not None else (b"" if backup_dir is not None else b"~")
    base, report = split_path(state.curr_dir, module.name), None
    if state.verbosity >= 2 and send is not None:
        shown = None
        if rel is not None:
            shown = backup_dir_shown(opts.backup_dir, sanitize_path(opts.backup_dir, 0), module.path)
            send(backup_dir_line(shown, state.tree.lstat(rel) is not None))
        report = BackupReporter(send, base, suffix, shown)
    return BackupPolicy(suffix=suffix, backup_dir=backup_dir, base=base, module=module.name, report=report)


def check_backup_dir(state: PushState) -> bytes | None:
    """Module path of ``--backup-dir`` (None without one), checked as rsync main.c do_recv does.

    Raises:
        RsyncError: it exists and is not a directory (exit 1, as rsyncd's).
    """
    raw = state.opts.backup_dir
    if raw is None:
        return None
    clean = sanitize_path(raw, 0).rstrip(b"/") or b"."
    rel = clean if raw.startswith(b"/") else join_path(state.curr_dir, clean)
    st = state.tree.lstat(rel)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        shown = clean if not raw.startswith(b"/") else raw.rstrip(b"/")
        raise RsyncError(f"The backup-dir is not a directory: {os.fsdecode(shown)}", ExitCode.SYNTAX, bare=True)
    return rel
