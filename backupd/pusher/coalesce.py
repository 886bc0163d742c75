"""Coalescing: path events of a window -> one change per path -> one :class:`Batch`. Pure.

A window's events collapse per path (the last word wins, with the merges
below); a deleted or recursively sent directory swallows everything under it;
what is left becomes one ``rsync --files-from`` run per target:

- ``UPDATE``: the path is sent as it is now (file, symlink, or a directory
  without its content); if it vanished meanwhile, ``--delete-missing-args``
  deletes it on the target.
- ``TREE``: a directory created or moved into the tree, sent *with* its
  content. ``--files-from`` turns off the recursion of ``-a`` (a directory
  moved in would arrive empty), so a batch with a TREE adds ``-r`` and
  ``--delete`` (a stale copy on the target is cleaned too).
- ``DELETE``: the path is gone; ``--delete-missing-args`` removes it on the
  target. A directory replaced by a file or symlink swallows its old
  children too (``--force`` removes them with it). A directory deleted while not empty on the target is skipped with
  exit 0 ("cannot delete non-empty directory") unless ``--force`` is given,
  so ``force`` stays set on a path until a batch carrying it succeeds.

Paths are ``bytes`` relative to the source root (``b"."`` is the root itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

ROOT = b"."


class Kind(IntEnum):
    """What happened to one path (the stored value in queues and the journal)."""

    UPDATE = 1
    TREE = 2
    DELETE = 3


@dataclass(frozen=True)
class PathEvent:
    """One watcher event: ``path`` relative to the source root, never starting with ``/``."""

    path: bytes
    kind: Kind
    is_dir: bool = False


@dataclass(frozen=True)
class Change:
    """The coalesced state of one path since its last successful push.

    ``force``: a directory was deleted at this path meanwhile, so the batch
    needs ``--force`` (deleting it, or replacing it with a file).
    """

    kind: Kind
    is_dir: bool = False
    force: bool = False


def change_of(event: PathEvent) -> Change:
    """The change one event means on its own."""
    if event.kind is Kind.TREE:
        return Change(Kind.TREE, True)
    if event.kind is Kind.DELETE:
        return Change(Kind.DELETE, event.is_dir, force=event.is_dir)
    return Change(Kind.UPDATE, event.is_dir)


def merge(old: Change | None, new: Change) -> Change:
    """``old`` followed by ``new`` on the same path.

    A directory deleted and then created again is a TREE (its old content
    must go); otherwise the newer kind wins, ``force`` is sticky.
    """
    if old is None:
        return new
    force = old.force or new.force
    if new.kind is Kind.DELETE:
        return Change(Kind.DELETE, new.is_dir, force)
    if new.kind is Kind.TREE or old.kind is Kind.TREE:
        return Change(Kind.TREE, True, force)
    if old.kind is Kind.DELETE and old.is_dir and new.is_dir:
        return Change(Kind.TREE, True, force)
    return Change(Kind.UPDATE, new.is_dir, force)


def coalesce(events: Iterable[PathEvent], into: dict[bytes, Change] | None = None) -> dict[bytes, Change]:
    """Collapse ``events`` (in order) per path, on top of ``into`` if given (updated in place)."""
    out = {} if into is None else into
    for event in events:
        out[event.path] = merge(out.get(event.path), change_of(event))
    return out


@dataclass(frozen=True)
class Batch:
    """One rsync run for one target, and what it settles.

    ``files``: the ``--files-from`` list, sorted. ``recursive``: ``-r`` and
    ``--delete`` (some TREE). ``force``: ``--force``. ``covered``: every
    pending path this run settles once it succeeds (listed or swallowed).
    ``deferred``: directory UPDATEs kept for a later window, because ``-r``
    would send their whole content.
    """

    files: tuple[bytes, ...]
    recursive: bool
    force: bool
    covered: tuple[bytes, ...]
    deferred: tuple[bytes, ...] = ()
    updates: int = 0
    trees: int = 0
    deletes: int = 0


def ancestors(path: bytes) -> Iterable[bytes]:
    """``a/b/c`` -> ``a/b``, ``a`` (the root ``.`` is nobody's ancestor here)."""
    while (cut := path.rfind(b"/")) > 0:
        path = path[:cut]
        yield path


def _swallows(change: Change) -> bool:
    """True if ``change`` settles everything under its path.

    A deleted or recursively sent directory does; so does a directory that
    became a file or symlink (an UPDATE with ``force``): ``--force`` removes
    the old directory with all it held, and a listed child would make
    ``rsync -R`` send the path again as an implied directory.
    """
    return change.kind in (Kind.DELETE, Kind.TREE) or (change.force and not change.is_dir)


def plan_batch(pending: Mapping[bytes, Change]) -> Batch:
    """Turn a target's pending changes into one batch (what to send, and why)."""
    swallowers = {p for p, c in pending.items() if _swallows(c) and p != ROOT}
    kept = {p: c for p, c in pending.items() if not any(a in swallowers for a in ancestors(p))}
    recursive = any(c.kind is Kind.TREE for c in kept.values())
    deferred = sorted(p for p, c in kept.items() if recursive and c.kind is Kind.UPDATE and c.is_dir)
    listed = {p: c for p, c in kept.items() if not (recursive and c.kind is Kind.UPDATE and c.is_dir)}
    deferred_set = set(deferred)
    kinds = [c.kind for c in listed.values()]
    return Batch(
        files=tuple(sorted(listed)),
        recursive=recursive,
        force=any(c.force for c in listed.values()),
        covered=tuple(sorted(p for p in pending if p not in deferred_set)),
        deferred=tuple(deferred),
        updates=kinds.count(Kind.UPDATE),
        trees=kinds.count(Kind.TREE),
        deletes=kinds.count(Kind.DELETE),
    )
