"""``--partial-dir``: where a push keeps and resumes partial files, as rsync's receiver.

The partial file of ``dir/name`` is ``dir/PARTIAL_DIR/name`` (a relative
``--partial-dir``, the usual case) or ``PARTIAL_DIR/name`` from the module
root (an absolute one, confined to the module). When it exists as a regular
file, the generator uses it as the basis of the transfer (fnamecmp_type
FNAMECMP_PARTIAL_DIR, itemized against it), and once the file is in place
the partial file goes and its directory too if nothing else is in it.

Source: rsync util1.c partial_dir_fname() / handle_partial_dir(),
generator.c recv_generator (partialptr), receiver.c recv_files, protocols 30-32.
"""

from __future__ import annotations

import os
import stat

from backupd.errors import StorageError
from backupd.roles.alt_dest import AltBasis
from backupd.roles.push import PushState, join_path, sanitize_path

FNAMECMP_PARTIAL_DIR = 0x81  # rsync.h: the basis is the file in the partial dir


def partial_path(state: PushState, path: bytes) -> bytes | None:
    """Module path of the partial file of module path ``path``, or None (no ``--partial-dir``).

    None too when the module's own filter rules exclude the partial dir or
    file (util1.c partial_dir_fname's daemon_filter_list check).
    """
    raw = state.opts.partial_dir
    if not raw:
        return None
    clean = sanitize_path(raw, 0).rstrip(b"/")
    if clean in (b"", b"."):
        return None
    parent, _, name = path.rpartition(b"/")
    pdir = clean if raw.startswith(b"/") else join_path(parent or b".", clean)
    if state.daemon_excluded(pdir, True) or state.daemon_excluded(join_path(pdir, name), False):
        return None
    return join_path(pdir, name)


def partial_basis(state: PushState, path: bytes) -> AltBasis | None:
    """The partial file of ``path`` as a basis, when it exists as a regular file (recv_generator partialptr)."""
    ppath = partial_path(state, path)
    if ppath is None:
        return None
    try:
        st = state.tree.lstat(ppath)
    except StorageError:
        return None  # a partial dir that is a symlink or unreadable: rsync's link_stat fails too
    if st is None or not stat.S_ISREG(st.st_mode):
        return None
    return AltBasis(FNAMECMP_PARTIAL_DIR, ppath, st)


def keep_in_partial_dir(state: PushState, staged, ppath: bytes) -> bool:
    """Move an unfinished transfer's data to its partial file ``ppath``; False if that cannot be done.

    The partial dir is made (0700) when missing, replacing a non-directory
    in the way (util1.c handle_partial_dir PDIR_CREATE).
    """
    tree = state.tree
    pdir = ppath.rpartition(b"/")[0] or b"."
    try:
        if pdir != b".":
            st = tree.lstat(pdir)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                tree.delete(pdir, backup=False)
                st = None
            if st is None:
                tree.mkdir(pdir, 0o700, exist_ok=True)
        staged.keep_partial_in(ppath)
    except (StorageError, OSError):
        return False
    return True


def drop_partial(state: PushState, ppath: bytes, log=None) -> None:
    """Remove a used partial file, then its dir if that is empty now (handle_partial_dir PDIR_DELETE).

    With history the partial file goes there as any deleted file does.
    Failures are only logged, as rsync ignores them.
    """
    tree = state.tree
    pdir = ppath.rpartition(b"/")[0] or b"."
    try:
        tree.delete(ppath, backup=False)  # receiver.c: do_unlink_at, no make_backup
        if pdir != b"." and not state.opts.partial_dir.startswith(b"/") and not tree.listdir(pdir):
            tree.delete(pdir)
    except (StorageError, OSError) as exc:
        if log is not None:
            log.warning("partial dir {}: {}", os.fsdecode(pdir), exc)
