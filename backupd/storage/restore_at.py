"""Point-in-time restore: the version of a path, or a whole tree, live at T.

``plan_restore`` asks the catalog which version of each path at or below
PATH was live at T (``catalog.at_bound``: the end of the second T names)
and returns a ``RestorePlan`` (pure: reads the catalog only). ``apply_restore``
copies each version from where it is stored (its history copy, or the live
file) into a destination ``ModuleTree``:

- a plain directory (``history=None``): temp file + rename per entry, so a
  failed restore leaves no torn file;
- the live module itself: the destination tree has the module's history and
  catalog, so every entry it replaces goes to history first and the
  restored version is recorded as a new live version (a versioned change).

Files come back with the cataloged mode and mtime, directories too (set
last, deepest first); each file's bytes are checked against the catalog's
xxh128 while copied (a mismatch aborts that file, reported). With
``replace`` the destination becomes exactly the tree at T: what is there
and was not live at T is removed (into history in a module).

Source: issue 12 (point-in-time restore); ``catalog.py`` (interval rule).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from backupd.errors import StorageError
from backupd.storage.catalog import Catalog, Row
from backupd.storage.fsops import join_path, open_dir, split_path
from backupd.storage.tree import ModuleTree

CHUNK = 1 << 20  # bytes per read while copying a version out


@dataclass(frozen=True)
class RestoreItem:
    """One version to copy: its row and its path in the destination tree."""

    row: Row
    dest: bytes


@dataclass(frozen=True)
class RestorePlan:
    """What a restore of ``path`` at ``bound`` copies; ``items`` parents first."""

    module: str
    path: bytes
    bound: int
    dest_root: bytes
    items: tuple[RestoreItem, ...] = ()

    @property
    def files(self) -> int:
        """Non-directory versions to copy."""
        return sum(1 for i in self.items if i.row.type != "dir")

    @property
    def size(self) -> int:
        """Bytes of the file versions to copy."""
        return sum(i.row.size for i in self.items if i.row.type == "file")

    @property
    def missing(self) -> list[Row]:
        """Versions live at T whose stored copy is known to be gone."""
        return [i.row for i in self.items if i.row.missing]


@dataclass
class RestoreResult:
    """What ``apply_restore`` wrote, skipped and removed; ``errors`` one line each."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    unchanged: int = 0
    removed: int = 0
    errors: list[str] = field(default_factory=list)


def plan_restore(catalog: Catalog, path: bytes, bound: int, dest_root: bytes) -> RestorePlan:
    """The versions of ``path`` and below live at ``bound``, mapped under ``dest_root``.

    ``path`` itself maps to ``dest_root`` (the caller picks ``DIR/<name>``,
    or ``DIR`` for the module root). Raises nothing; an empty plan means
    nothing was live there at T.
    """
    rows = catalog.live_at(path, bound)
    root = path in (b"", b".")
    items = []
    for row in rows:
        rel = row.path if root else row.path[len(path):].lstrip(b"/")
        dest = dest_root if not rel else (dest_root + b"/" + rel if dest_root else rel)
        items.append(RestoreItem(row, dest))
    items.sort(key=lambda i: (i.row.type != "dir", i.dest.count(b"/"), i.dest))
    return RestorePlan(catalog_module(catalog), path, bound, dest_root, tuple(items))


def catalog_module(catalog: Catalog) -> str:
    """The catalog file's stem, for messages."""
    return catalog.path.stem


def apply_restore(plan: RestorePlan, source: ModuleTree, dest: ModuleTree, *, replace: bool = False,
                  progress: Callable[[int], None] | None = None) -> RestoreResult:
    """Copy the plan's versions from ``source`` into ``dest`` (see the module docstring).

    ``progress(n)`` gets the bytes copied since its previous call.

    Raises:
        StorageError: the destination cannot be written at all (a single
            version that fails is an error line in the result instead).
    """
    result = RestoreResult()
    same = source.root == dest.root
    for item in plan.items:
        if item.row.type == "dir":
            _ensure_dir(dest, item.dest)
    for item in plan.items:
        if item.row.type == "dir":
            continue
        if same and item.row.live_to is None and item.dest == item.row.path:
            result.unchanged += 1
            continue
        try:
            _copy_version(item, source, dest, result, progress)
        except (StorageError, OSError) as exc:
            result.errors.append(f"{os.fsdecode(item.row.path)}: {exc}")
    if replace:
        _remove_extras(plan, dest, result)
    for item in sorted((i for i in plan.items if i.row.type == "dir"), key=lambda i: -i.dest.count(b"/")):
        if item.dest:
            dest.set_attrs(item.dest, mode=item.row.mode & 0o7777, mtime_ns=item.row.mtime_ns)
        result.dirs += 1
    return result


def _ensure_dir(dest: ModuleTree, path: bytes) -> None:
    if not path:
        return
    st = dest.lstat(path)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        dest.delete(path)
    if st is None or not stat.S_ISDIR(st.st_mode):
        dest.makedirs(path, 0o700)


def _copy_version(item: RestoreItem, source: ModuleTree, dest: ModuleTree, result: RestoreResult,
                  progress) -> None:
    row = item.row
    if row.missing:
        raise StorageError(f"the version stored at {os.fsdecode(row.stored)} is missing")
    parent = item.dest.rpartition(b"/")[0]
    if parent:
        _ensure_dir(dest, parent)
    if row.type == "symlink":
        target = source.readlink(row.stored)
        _check(row, xxhash.xxh128(target).hexdigest())
        dest.symlink(target, item.dest)
        dest.set_attrs(item.dest, mtime_ns=row.mtime_ns)
    elif row.type == "file":
        _copy_file(row, source, dest, item.dest, result, progress)
    else:
        dest.mknod(item.dest, row.mode, 0)
        dest.set_attrs(item.dest, mode=row.mode & 0o7777, mtime_ns=row.mtime_ns)
    result.files += 1


def _copy_file(row: Row, source: ModuleTree, dest: ModuleTree, path: bytes, result: RestoreResult,
               progress) -> None:
    comps = split_path(row.stored, source.module)
    dir_fd = open_dir(source.root_fd, comps[:-1], source.module, row.stored)
    try:
        fd = os.open(comps[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    h = xxhash.xxh128()
    with open(fd, "rb", buffering=0) as src, dest.create_staged(path, 0o600) as staged:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            staged.write(chunk)
            result.bytes += len(chunk)
            if progress is not None:
                progress(len(chunk))
        _check(row, h.hexdigest())
        staged.commit(mtime_ns=row.mtime_ns, mode=row.mode & 0o7777)


def _check(row: Row, digest: str) -> None:
    if row.xxh128 is not None and digest != row.xxh128:
        raise StorageError(f"stored copy {os.fsdecode(row.stored)} does not match its catalog checksum "
                           f"(xxh128 {digest} != {row.xxh128}): not restored, run backupd verify")


def _remove_extras(plan: RestorePlan, dest: ModuleTree, result: RestoreResult) -> None:
    """Remove what is in the restored directories but was not live at T."""
    wanted = {i.dest for i in plan.items}
    for item in plan.items:
        if item.row.type != "dir":
            continue
        found = dest.scan_dir(item.dest or b".") or {}
        for name in found:
            child = join_path(split_path(item.dest, dest.module) + (name,))
            if child not in wanted and not dest.is_history_path(child) and not _holds_history(dest, child):
                dest.delete(child)
                result.removed += 1


def _holds_history(dest: ModuleTree, path: bytes) -> bool:
    return dest.history is not None and dest.history.is_ancestor(split_path(path, dest.module))


__all__ = ["RestoreItem", "RestorePlan", "RestoreResult", "apply_restore", "plan_restore"]
