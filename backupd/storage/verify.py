"""``backupd verify``: re-read every stored version and compare it with the catalog.

For each catalog row (live and history; with ``since``, only versions live
at or after it) the stored entry is opened without following symlinks and
hashed (xxh128 of a file's bytes, of a symlink's target); a row whose
entry is gone, is of another type, or hashes differently is a finding.
Rows already marked missing are findings too. Reads only; the catalog is
not changed (the meta ``verify.last`` aside, written by the CLI and by
the daemon's scheduled runs: ops/verify_schedule.py).

Source: issue 12 (verify); ``catalog.py`` (columns).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from backupd.storage.catalog import Catalog, Row, hash_entry_at, kind_of
from backupd.storage.fsops import open_dir, split_path
from backupd.storage.tree import ModuleTree


@dataclass(frozen=True)
class Finding:
    """One problem: ``kind`` is ``missing``, ``mismatch`` or ``type``; ``stored`` where it should be."""

    kind: str
    path: bytes
    stored: bytes
    detail: str


@dataclass
class VerifyResult:
    """Counts of one module's verify run, and its findings."""

    module: str
    checked: int = 0
    bytes: int = 0
    skipped: int = 0
    findings: list[Finding] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """Findings of one kind."""
        return sum(1 for f in self.findings if f.kind == kind)


def verify_module(tree: ModuleTree, catalog: Catalog, *, since_ns: int | None = None,
                  progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Check every version the catalog lists for ``tree`` (see the module docstring).

    ``progress(n)`` gets the bytes read since its previous call.
    """
    result = VerifyResult(tree.module)
    where, params = "1", ()
    if since_ns is not None:
        where, params = "live_to IS NULL OR live_to >= ?", (since_ns,)
    for row in catalog.rows(where, params):
        _verify_row(tree, row, result)
        if progress is not None and row.type == "file":
            progress(row.size)
    return result


def _verify_row(tree: ModuleTree, row: Row, result: VerifyResult) -> None:
    if row.missing:
        result.findings.append(Finding("missing", row.path, row.stored, "marked missing by reconcile"))
        return
    if row.type in ("dir", "other") or (row.live_to is not None and not row.history):
        result.skipped += 1
        return
    comps = split_path(row.stored, tree.module)
    try:
        fd = open_dir(tree.root_fd, comps[:-1], tree.module, row.stored)
    except (OSError, ValueError):
        result.findings.append(Finding("missing", row.path, row.stored, "its directory is gone"))
        return
    try:
        st = os.stat(comps[-1], dir_fd=fd, follow_symlinks=False)
        if kind_of(st.st_mode) != row.type:
            result.findings.append(Finding("type", row.path, row.stored, f"is a {kind_of(st.st_mode)}, "
                                           f"cataloged as a {row.type}"))
            return
        digest = hash_entry_at(fd, comps[-1], st)
    except FileNotFoundError:
        result.findings.append(Finding("missing", row.path, row.stored, "the stored copy is gone"))
        return
    except OSError as exc:
        result.findings.append(Finding("missing", row.path, row.stored, f"unreadable: {exc.strerror}"))
        return
    finally:
        os.close(fd)
    result.checked += 1
    result.bytes += st.st_size if stat.S_ISREG(st.st_mode) else 0
    if row.xxh128 is not None and digest != row.xxh128:
        result.findings.append(Finding("mismatch", row.path, row.stored,
                                       f"xxh128 {digest}, catalog has {row.xxh128}"))


__all__ = ["Finding", "VerifyResult", "verify_module"]
