"""Snapshot views: the tree of a module as it was at T, made for one pull session.

``materialize`` lays out every version the catalog says was live at T
(``catalog.at_bound``) in a private scratch directory outside the module:
directories made with their cataloged mode and mtime, files and symlinks
hard-linked from where each version is stored (its history copy, or the
live file), copied where a link is impossible (another file system). A
version's bytes are shared, never changed: history entries are immutable
and a push replaces a live file by renaming a new inode over it, so the
view keeps the bytes it was made with. The session then serves that
directory through the normal sender role, read-only.

Scratch: ``<catalog folder>/snapshots/<session>/``; removed when the
session ends (``discard``), and all of them on the next start.

Source: issue 12 (snapshot views ``MODULE@T``).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from backupd.storage.catalog import Catalog, module_catalog_file
from backupd.storage.fsops import copy_entry_at, open_dir, split_path
from backupd.storage.history import LINK_FALLBACK
from backupd.storage.tree import ModuleTree

SCRATCH = "snapshots"


def scratch_root(module) -> Path:
    """The folder holding a module's snapshot views (beside its catalog)."""
    return module_catalog_file(module).parent / SCRATCH


def materialize(module, bound: int, session_id: str) -> tuple[Path, int]:
    """Build the view of ``module`` (a ModuleConfig) at ``bound``; returns (its directory, entries).

    Raises:
        FileNotFoundError: the module has no catalog.
        StorageError, OSError: a stored version cannot be reached.
    """
    dest = scratch_root(module) / session_id
    dest.mkdir(mode=0o700, parents=True)
    with Catalog(module_catalog_file(module), readonly=True) as catalog:
        rows = catalog.live_at(b".", bound)
    dirs = sorted((r for r in rows if r.type == "dir"), key=lambda r: r.path.count(b"/"))
    dst_root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for row in dirs:
            os.close(_makedirs(dst_root, split_path(row.path)))
        with ModuleTree(module.path, module=module.name) as tree:
            for row in rows:
                if row.type != "dir" and not row.missing:
                    _place(tree, row, dst_root)
        for row in sorted(dirs, key=lambda r: -r.path.count(b"/")):
            fd = _makedirs(dst_root, split_path(row.path))
            try:
                os.chmod(fd, stat.S_IMODE(row.mode) | 0o500)
                os.utime(fd, ns=(row.mtime_ns, row.mtime_ns))
            finally:
                os.close(fd)
    finally:
        os.close(dst_root)
    os.chmod(dest, 0o755)
    return dest, len(rows)


def _makedirs(root_fd: int, comps: tuple[bytes, ...]) -> int:
    """Create ``comps`` below ``root_fd`` (confined); returns the last dir's readable fd (caller closes)."""
    fd = os.dup(root_fd)
    for name in comps:
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        fd = nxt
    return fd


def _place(tree: ModuleTree, row, dst_root: int) -> None:
    """Link (else copy) the stored entry of ``row`` to its path in the view."""
    src = split_path(row.stored, tree.module)
    dst = split_path(row.path)
    src_fd = open_dir(tree.root_fd, src[:-1], tree.module, row.stored)
    dst_fd = _makedirs(dst_root, dst[:-1])
    try:
        st = os.stat(src[-1], dir_fd=src_fd, follow_symlinks=False)
        try:
            os.link(src[-1], dst[-1], src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in LINK_FALLBACK and exc.errno != errno.EXDEV:
                raise
            copy_entry_at(src_fd, src[-1], st, dst_fd, dst[-1])
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def discard(path: Path | None) -> None:
    """Remove one view (never raises)."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def discard_all(module) -> None:
    """Remove every view left by sessions that were killed (on start)."""
    shutil.rmtree(scratch_root(module), ignore_errors=True)


__all__ = ["discard", "discard_all", "materialize", "scratch_root"]
