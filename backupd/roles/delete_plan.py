"""What a push's ``--delete`` removes, and why, in rsync's order: a pure plan.

``plan_deletions`` decides for one content directory of the file list which
of its entries go (rsync generator.c delete_in_dir()); ``plan_missing`` for
one ``--delete-missing-args`` entry. Neither reads the filesystem: they take
the directory's listing as data (``Listed``: name, lstat ``st_mode`` and,
for a directory the plan may remove, what it holds), the names the file
list keeps, the filter and module rules (``DeleteRules``) and what is left
of the ``--max-delete`` budget, and return a ``DeletePlan``: ordered steps
(a ``Removal`` with the names the client is told about, or a ``Note`` such
as "cannot delete non-empty directory: X") and the count of deletions the
limit skipped. ``roles/deletion.Deleter`` reads the listings, applies the
plan (into history, or gone with ``history = no``) and reports it;
``--dry-run`` reports without applying.

``iter_deletions`` is the same plan step by step (both are it): a directory
not read yet is asked for (``ReadDir``) when the plan reaches it, after the
steps before it were applied. With ``--backup`` on a module without history
a deletion's backups can land in a directory the pass reads later (a
``--backup-dir`` inside the deleted tree), and rsync, reading each
directory as it gets there, deletes those too.

Order and counting follow rsync delete.c delete_item() and
delete_dir_contents(): a directory's entries in reverse file-list order, a
directory's contents before the directory; every reported name counts one
against ``--max-delete``; at the limit an entry is skipped (counted in
``skipped``), and a directory that keeps anything is left with rsync's
note. A directory that may go whole is one removal (one move into history).

Source: rsync generator.c delete_in_dir(), delete.c delete_item() /
delete_dir_contents(); rsync-protocol-b.md §8; style.md §1 (pure plans).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Generator, Sequence
from dataclasses import dataclass, field

from backupd.protocol.filters import FilterList
from backupd.protocol.flist import sort_key

NOT_IN_FILE_LIST = "not in the file list"
MISSING_ARG = "a missing source argument (--delete-missing-args)"
NOT_EMPTY = "cannot delete non-empty directory"


def _never(_path: bytes) -> bool:
    return False


@dataclass(frozen=True)
class Listed:
    """One directory entry as the planner sees it.

    ``mode`` is the entry's lstat ``st_mode`` (only the type bits matter).
    ``children`` is what a directory holds (any order), or None when it was
    not read: the plan needs it only for a directory it may remove.
    ``unreadable``: the directory could not be listed (the reader recorded
    the error); it stays, as rsync's rmdir then finds it not empty.
    """

    name: bytes
    mode: int
    children: tuple[Listed, ...] | None = None
    unreadable: bool = False

    @property
    def is_dir(self) -> bool:
        """True for a directory (S_ISDIR)."""
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class DeleteRules:
    """What keeps an entry from deletion (pure: filter objects and a path test).

    ``filters``: the transfer's rules (``-``/``P`` protect, rsync
    exclude.c); ``module_filters``: the module's own ``exclude`` rules, on
    module-relative paths; ``is_history``: True for the history folder and
    what is inside it (never deleted).
    """

    filters: FilterList | None = None
    module_filters: FilterList | None = None
    is_history: Callable[[bytes], bool] = field(default=_never)

    def protected(self, rel: bytes, path: bytes, is_dir: bool, *, inside: bool) -> bool:
        """True if a rule keeps ``rel`` (transfer-relative) at ``path`` (module-relative).

        ``inside``: the entry is within a directory being deleted, where
        perishable (``p``) rules protect nothing (rsync delete_item sets
        ignore_perishable).
        """
        if self.filters is not None and self.filters.protected_from_delete(rel, is_dir, perishable_ok=inside):
            return True
        return self.module_filters is not None and self.module_filters.excluded(path, is_dir, side=None)


@dataclass(frozen=True)
class Removal:
    """One delete of the plan: ``path`` goes (with what it holds when ``contents`` is set).

    ``rel`` is the name relative to the transfer root, as MSG_DELETED gives
    it; ``path`` is module-relative. ``kind`` is file, dir, symlink, device
    or special. ``contents`` lists ``(rel, is_dir)`` of what a directory
    removed whole holds, deepest first, reported before it. ``nested``: the
    entry is inside a directory emptied item by item (rsync then says twice
    that it cannot delete it, should it stay after all).
    """

    rel: bytes
    path: bytes
    kind: str
    reason: str
    contents: tuple[tuple[bytes, bool], ...] = ()
    nested: bool = False

    @property
    def is_dir(self) -> bool:
        """True when a directory is removed."""
        return self.kind == "dir"

    @property
    def reported(self) -> tuple[tuple[bytes, bool], ...]:
        """``(rel, is_dir)`` of every name reported as deleted, in rsync's order."""
        return (*self.contents, (self.rel, self.is_dir))

    @property
    def spent(self) -> int:
        """How much of the --max-delete budget this removal uses (one per reported name)."""
        return len(self.contents) + 1


@dataclass(frozen=True)
class Note:
    """A directory the plan leaves because something in it stays: rsync's INFO line."""

    rel: bytes
    reason: str = NOT_EMPTY

    @property
    def text(self) -> bytes:
        """The line rsync prints (delete.c delete_dir_contents), UTF-8 with replacement."""
        return f"{self.reason}: {os.fsdecode(self.rel)}\n".encode("utf-8", "replace")


@dataclass(frozen=True)
class DeletePlan:
    """The ordered steps of one deletion decision, and what the limit skipped.

    ``steps`` are carried out in order; ``skipped`` counts the deletions
    --max-delete left undone (rsync skipped_deletes).
    """

    steps: tuple[Removal | Note, ...] = ()
    skipped: int = 0

    @property
    def removals(self) -> tuple[Removal, ...]:
        """The removals alone, in order."""
        return tuple(s for s in self.steps if isinstance(s, Removal))

    @property
    def spent(self) -> int:
        """Budget used if every removal succeeds."""
        return sum(r.spent for r in self.removals)


def kind_of(mode: int) -> str:
    """file, dir, symlink, device or special: the NDX_DEL_STATS class of ``mode`` (delete.c delete_item)."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special"


def join_rel(base: bytes, name: bytes) -> bytes:
    """``base/name`` with b"." or b"" as the top on either side."""
    if name in (b".", b""):
        return base
    return name if base in (b".", b"") else base + b"/" + name


def reverse_order(listing: Sequence[Listed]) -> list[Listed]:
    """A listing in reverse rsync file-list order (delete_in_dir walks its dirlist backwards)."""
    return sorted(listing, key=lambda item: sort_key(item.name, item.is_dir), reverse=True)


def extraneous(dir_rel: bytes, dir_path: bytes, item: Listed, keep: Collection[bytes], rules: DeleteRules) -> bool:
    """True if ``item`` of directory ``dir_path`` is one --delete removes.

    Not named by the file list (whatever its type: flist_find_ignore_dirness),
    not the history folder, not protected by a filter rule (perishable ones
    count here) nor by the module's exclude rules.
    """
    if item.name in keep:
        return False
    path = join_rel(dir_path, item.name)
    if rules.is_history(path):
        return False
    return not rules.protected(join_rel(dir_rel, item.name), path, item.is_dir, inside=False)


@dataclass(frozen=True)
class ReadDir:
    """A lazy plan's request: the listing of directory ``path`` as it is now, sent back to the plan.

    The driver answers with the entries (``Listed``, children unread) or
    None when the directory cannot be listed (the driver records the error).
    """

    rel: bytes
    path: bytes


PlanSteps = Generator[Removal | Note | ReadDir, tuple[Listed, ...] | None, int]
"""A lazy plan: yields steps in order, is sent a listing at each ``ReadDir``, returns ``skipped``."""


def extraneous_entries(
    dir_rel: bytes, dir_path: bytes, listing: Sequence[Listed], keep: Collection[bytes], rules: DeleteRules
) -> list[tuple[bytes, bytes, Listed]]:
    """``(rel, path, item)`` of each entry --delete removes from one directory, in reverse file-list order.

    What rsync generator.c delete_in_dir() passes to delete_item(), or with
    --delete-delay remembers for later (remember_delete).
    """
    return [
        (join_rel(dir_rel, item.name), join_rel(dir_path, item.name), item)
        for item in reverse_order(listing)
        if extraneous(dir_rel, dir_path, item, keep, rules)
    ]


def plan_deletions(
    dir_rel: bytes,
    dir_path: bytes,
    listing: Sequence[Listed],
    keep: Collection[bytes],
    rules: DeleteRules,
    max_delete_left: int | None,
) -> DeletePlan:
    """Plan what directory ``dir_path`` loses (rsync generator.c delete_in_dir).

    Args:
        dir_rel: the directory's name relative to the transfer root (b"." for the top).
        dir_path: its module-relative path.
        listing: its entries; a directory entry not in ``keep`` carries its children.
        keep: the basenames the file list has in this directory.
        rules: what protects an entry.
        max_delete_left: deletions --max-delete still allows (None: no limit).

    Returns:
        The plan, entries in reverse file-list order.

    Raises:
        ValueError: a directory to remove came without its children.
    """
    entries = extraneous_entries(dir_rel, dir_path, listing, keep, rules)
    return collect_plan(iter_deletions(entries, NOT_IN_FILE_LIST, rules, max_delete_left))


def iter_deletions(
    entries: Sequence[tuple[bytes, bytes, Listed]],
    reason: str,
    rules: DeleteRules,
    max_delete_left: int | None,
    *,
    whole: bool = True,
) -> PlanSteps:
    """Plan the removal of ``entries`` step by step, each directory read when the plan reaches it.

    ``entries`` are ``(rel, path, item)`` in the order rsync's delete_item()
    takes them (``extraneous_entries``). A directory whose ``children`` are
    None is asked for with a ``ReadDir`` when the plan gets there, after
    every step before it was applied: what those steps made (a backup in a
    ``--backup-dir`` inside the deleted tree) is then seen, as rsync's
    delete_dir_contents() reads each directory when it reaches it.
    ``whole=False`` empties every directory item by item (rsync's own way;
    with ``whole`` a directory that may go whole is one removal, a single
    move into history). Source: rsync delete.c delete_item() /
    delete_dir_contents(); generator.c delete_in_dir().

    Returns:
        (as the generator's value) the count of deletions --max-delete skipped.
    """
    planner = _Planner(rules, max_delete_left, whole=whole)
    for rel, path, item in entries:
        yield from planner.entry(rel, path, item, reason)
    return planner.skipped


def collect_plan(steps: PlanSteps) -> DeletePlan:
    """Run a plan whose listings were all read beforehand into a ``DeletePlan``.

    Raises:
        ValueError: the plan asked for a listing that was not read.
    """
    out: list[Removal | Note] = []
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return DeletePlan(tuple(out), stop.value)
        if isinstance(step, ReadDir):
            raise ValueError(f"directory {os.fsdecode(step.rel)!r}: its listing was not read")
        out.append(step)


def plan_missing(
    rel: bytes, path: bytes, item: Listed, rules: DeleteRules, max_delete_left: int | None, *, force: bool
) -> DeletePlan:
    """Plan the removal of what a missing source argument names (--delete-missing-args).

    rsync delete_item() without DEL_RECURSE: a non-empty directory goes only
    with ``--force``; otherwise the plan is the note alone.

    Raises:
        ValueError: a directory came without its children.
    """
    if item.is_dir and (item.unreadable or not force and _children(item, rel)):
        return DeletePlan((Note(rel),))
    return collect_plan(iter_deletions([(rel, path, item)], MISSING_ARG, rules, max_delete_left))


def contents_in_order(rel: bytes, item: Listed) -> list[tuple[bytes, bool]]:
    """``(rel, is_dir)`` of everything inside directory ``item``, deepest first, in reverse order.

    What rsync reports deleted when a directory makes room for an entry of
    another type (delete_item with DEL_MAKE_ROOM); rules do not apply there.

    Raises:
        ValueError: a directory came without its children.
    """
    out: list[tuple[bytes, bool]] = []
    for child in reverse_order(_children(item, rel)):
        child_rel = join_rel(rel, child.name)
        if child.is_dir:
            out += contents_in_order(child_rel, child)
        out.append((child_rel, child.is_dir))
    return out


def _children(item: Listed, rel: bytes) -> tuple[Listed, ...]:
    if item.children is None:
        raise ValueError(f"directory {os.fsdecode(rel)!r}: its listing was not read")
    return item.children


class _Planner:
    """Yields steps against the --max-delete budget (rsync's deleted_files counter).

    Every method is a generator of steps; a listing not read yet is asked
    for with ``ReadDir`` (``_listing``), so the caller applies each step
    before the next directory is read.
    """

    def __init__(self, rules: DeleteRules, left: int | None, *, whole: bool) -> None:
        self.rules = rules
        self.left = left
        self.whole = whole
        self.skipped = 0

    def _spend(self, n: int) -> None:
        if self.left is not None:
            self.left -= n

    def entry(self, rel: bytes, path: bytes, item: Listed, reason: str) -> PlanSteps:
        """One top-level entry (delete_item with DEL_RECURSE): whole when it may, else item by item."""
        if not item.is_dir:
            yield from self._leaf(rel, path, item, reason, nested=False)
            return self.skipped
        children = yield from self._listing(rel, path, item)
        if children is None:
            yield Note(rel)
            return self.skipped
        if self.whole:
            items = self._items(rel, path, children)
            fits = self.left is None or self.left >= len(items) + 1
            if fits and not any(protected for _, _, protected in items):
                yield Removal(rel, path, "dir", reason, tuple((r, d) for r, d, _ in items))
                self._spend(len(items) + 1)
                return self.skipped
        if (yield from self._contents(rel, path, children)):
            yield from self._leaf(rel, path, item, reason, nested=False)
        return self.skipped

    @staticmethod
    def _listing(rel: bytes, path: bytes, item: Listed) -> Generator[ReadDir, tuple[Listed, ...] | None,
                                                                     tuple[Listed, ...] | None]:
        """What directory ``item`` holds: as read beforehand, else asked for now; None: unreadable."""
        if item.unreadable:
            return None
        if item.children is not None:
            return item.children
        return (yield ReadDir(rel, path))

    def _leaf(self, rel: bytes, path: bytes, item: Listed, reason: str, *, nested: bool) -> PlanSteps:
        """One file or emptied directory: the limit check, then the removal (delete_item); True if planned."""
        if self.left == 0:
            self.skipped += 1
            return False
        yield Removal(rel, path, kind_of(item.mode), reason, nested=nested)
        self._spend(1)
        return True

    def _contents(self, rel: bytes, path: bytes, children: tuple[Listed, ...]) -> PlanSteps:
        """Empty a directory item by item (delete_dir_contents); True if it would be empty."""
        empty = True
        reason = f"inside {os.fsdecode(rel)}"
        for child in reverse_order(children):
            child_rel, child_path = join_rel(rel, child.name), join_rel(path, child.name)
            if self.rules.protected(child_rel, child_path, child.is_dir, inside=True):
                empty = False
            elif not child.is_dir:
                empty = (yield from self._leaf(child_rel, child_path, child, reason, nested=True)) and empty
            elif (inner := (yield from self._listing(child_rel, child_path, child))) is None:
                yield Note(child_rel)
                empty = False
            else:
                inner_empty = yield from self._contents(child_rel, child_path, inner)
                if self.left == 0:
                    self.skipped += 1
                    empty = False
                elif not inner_empty:
                    yield Note(child_rel)  # rmdir: ENOTEMPTY, after delete_dir_contents said so
                    empty = False
                else:
                    empty = (yield from self._leaf(child_rel, child_path, child, reason, nested=True)) and empty
        if not empty:
            yield Note(rel)
        return empty

    def _items(self, rel: bytes, path: bytes, children: tuple[Listed, ...]) -> list[tuple[bytes, bool, bool]]:
        """Everything inside a directory in delete order: (rel, is_dir, protected).

        Raises:
            ValueError: a directory inside came without its children.
        """
        out = []
        for child in reverse_order(children):
            child_rel, child_path = join_rel(rel, child.name), join_rel(path, child.name)
            if child.is_dir and not child.unreadable:
                out += self._items(child_rel, child_path, _children(child, child_rel))
            protected = child.unreadable or self.rules.protected(child_rel, child_path, child.is_dir, inside=True)
            out.append((child_rel, child.is_dir, protected))
        return out
