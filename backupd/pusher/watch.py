"""Recursive inotify on one source directory (asyncinotify) -> :class:`PathEvent`.

- Every directory not excluded gets a watch. A directory created or moved
  in gets its watches *first*, then is walked, and is reported as one TREE
  event: whatever was created in it before its watch existed is sent by the
  recursive batch, whatever comes after raises events of its own.
- Moves: ``MOVED_FROM`` is a DELETE of the old path, ``MOVED_TO`` an UPDATE
  (file) or a TREE (directory). A directory moved within the tree keeps its
  watches (they follow the inode; the walk of the new path renames them); one
  moved out (no ``MOVED_TO`` within ``MOVE_PAIR_S``) loses its watches.
- Exclude rules are applied here, before anything is queued.
- Loss of events is reported, not hidden: the queue overflow event
  (``IN_Q_OVERFLOW``), ``ENOSPC`` from ``inotify_add_watch`` (the watch limit)
  and a watch dropped by the kernel without its directory being deleted
  (unmount, or the source root itself deleted or moved) each call ``on_loss``;
  the daemon then switches the source to RESCAN (``source_state.py``).

Source: inotify(7); asyncinotify 4.x.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from asyncinotify import Inotify, Mask
from loguru import logger

from backupd.pusher.coalesce import ROOT, Kind, PathEvent
from backupd.pusher.excludes import ExcludeRules
from backupd.pusher.source_state import Loss

WATCH_MASK = (
    Mask.CREATE | Mask.CLOSE_WRITE | Mask.MODIFY | Mask.ATTRIB | Mask.DELETE | Mask.MOVED_FROM
    | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR | Mask.DONT_FOLLOW
    | Mask.EXCL_UNLINK
)
_UPDATE = Mask.CREATE | Mask.CLOSE_WRITE | Mask.MODIFY | Mask.ATTRIB | Mask.MOVED_TO
MOVE_PAIR_S = 1.0  # a MOVED_FROM without its MOVED_TO after this long was a move out


class SourceWatcher:
    """Watches one source tree; reports events and losses through callbacks.

    Args:
        root: the source directory.
        exclude: rules applied to every event (``exclude`` + ``watch_exclude``).
        on_event: called with each :class:`PathEvent`, in order.
        on_loss: called when events were lost (the daemon rescans).
        inotify: the inotify object (tests pass one that injects faults).
    """

    def __init__(
        self,
        root: Path,
        exclude: ExcludeRules,
        on_event: Callable[[PathEvent], None],
        on_loss: Callable[[Loss], None],
        inotify: Inotify | None = None,
    ) -> None:
        self.root = os.fsencode(root)
        self.exclude = exclude
        self.on_event = on_event
        self.on_loss = on_loss
        self.inotify = inotify
        self.watches: dict[int, object] = {}  # wd -> asyncinotify Watch
        self.wd_path: dict[int, bytes] = {}  # wd -> dir relative to root (b"" is the root)
        self.path_wd: dict[bytes, int] = {}
        self._moved_from: dict[int, tuple[bytes, float]] = {}  # cookie -> (old path, when)
        self._removing: set[int] = set()
        self._deleted: set[int] = set()

    # ------------------------------------------------------------ setup

    def start(self) -> None:
        """Create the inotify instance (if not given) and watch the whole tree."""
        if self.inotify is None:
            self.inotify = Inotify()
        self.add_tree(b"")

    def close(self) -> None:
        """Close the inotify instance (and every watch)."""
        if self.inotify is not None:
            self.inotify.close()

    def add_tree(self, top: bytes) -> int:
        """Watch ``top`` and every directory under it that is not excluded.

        A directory already watched (same inode) keeps its wd under its new
        path. Returns the number of directories watched by this call.
        """
        stack = [top]
        added = 0
        while stack:
            rel = stack.pop()
            if not self._watch(rel):
                if rel == top and top == b"":
                    return added
                continue
            added += 1
            try:
                entries = list(os.scandir(self._abs(rel)))
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    child = os.path.join(rel, os.fsencode(entry.name)) if rel else os.fsencode(entry.name)
                    if not self.exclude.excluded(child, True):
                        stack.append(child)
        return added

    def _watch(self, rel: bytes) -> bool:
        try:
            watch = self.inotify.add_watch(self._abs(rel), WATCH_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                logger.warning("inotify watch limit reached at {}: events lost", os.fsdecode(self._abs(rel)))
                self.on_loss(Loss.WATCH_LIMIT)
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                logger.warning("cannot watch {}: {}", os.fsdecode(self._abs(rel)), exc.strerror)
            return False
        wd = watch.wd
        old = self.wd_path.get(wd)
        if old is not None and self.path_wd.get(old) == wd:
            del self.path_wd[old]
        self.watches[wd] = watch
        self.wd_path[wd] = rel
        self.path_wd[rel] = wd
        self._removing.discard(wd)
        return True

    def _abs(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel) if rel else self.root

    # ------------------------------------------------------------ events

    async def run(self) -> None:
        """Read and handle events until cancelled."""
        while True:
            event = await self.inotify.get()
            self.handle(event)

    def handle(self, event) -> None:
        """Turn one inotify event into PathEvents, watch changes or a loss."""
        mask = event.mask
        if Mask.Q_OVERFLOW in mask:
            logger.warning("inotify queue overflow under {}: events lost", os.fsdecode(self.root))
            self.on_loss(Loss.OVERFLOW)
            return
        watch = event.watch
        wd = watch.wd if watch is not None else None
        if Mask.IGNORED in mask:
            self._ignored(wd)
            return
        dir_rel = self.wd_path.get(wd) if wd is not None else None
        if dir_rel is None:
            return
        if event.name is None:
            self._self_event(wd, dir_rel, mask)
        else:
            name = os.fsencode(event.name)
            rel = os.path.join(dir_rel, name) if dir_rel else name
            self._child_event(rel, mask, event.cookie)
        self.tick()

    def _self_event(self, wd: int, dir_rel: bytes, mask: Mask) -> None:
        if Mask.DELETE_SELF in mask:
            self._deleted.add(wd)
        if dir_rel == b"" and (Mask.DELETE_SELF in mask or Mask.MOVE_SELF in mask):
            logger.warning("source root {} was deleted or moved", os.fsdecode(self.root))
            self.on_loss(Loss.WATCH_LOST)
        elif dir_rel == b"" and Mask.ATTRIB in mask:
            self.on_event(PathEvent(ROOT, Kind.UPDATE, True))

    def _child_event(self, rel: bytes, mask: Mask, cookie: int) -> None:
        is_dir = Mask.ISDIR in mask
        if self.exclude.excluded(rel, is_dir):
            return
        if is_dir and (Mask.CREATE in mask or Mask.MOVED_TO in mask):
            self._moved_from.pop(cookie, None)
            self.add_tree(rel)
            self.on_event(PathEvent(rel, Kind.TREE, True))
        elif Mask.DELETE in mask or Mask.MOVED_FROM in mask:
            if is_dir and Mask.MOVED_FROM in mask:
                self._moved_from[cookie] = (rel, time.monotonic())
            self.on_event(PathEvent(rel, Kind.DELETE, is_dir))
        elif mask & _UPDATE:
            self.on_event(PathEvent(rel, Kind.UPDATE, is_dir))

    def _ignored(self, wd: int | None) -> None:
        if wd is None:
            return
        rel = self.wd_path.pop(wd, None)
        self.watches.pop(wd, None)
        if rel is not None and self.path_wd.get(rel) == wd:
            del self.path_wd[rel]
        if wd in self._removing or wd in self._deleted or rel is None:
            self._removing.discard(wd)
            self._deleted.discard(wd)
            return
        logger.warning("watch on {} lost", os.fsdecode(self._abs(rel)))
        self.on_loss(Loss.WATCH_LOST)

    def tick(self, now: float | None = None) -> None:
        """Drop the watches of directories moved out of the tree (no MOVED_TO came)."""
        now = time.monotonic() if now is None else now
        for cookie, (old, when) in list(self._moved_from.items()):
            if now - when < MOVE_PAIR_S:
                continue
            del self._moved_from[cookie]
            prefix = old + b"/"
            for rel, wd in list(self.path_wd.items()):
                if rel == old or rel.startswith(prefix):
                    self._unwatch(wd)

    def _unwatch(self, wd: int) -> None:
        watch = self.watches.get(wd)
        rel = self.wd_path.pop(wd, None)
        if rel is not None and self.path_wd.get(rel) == wd:
            del self.path_wd[rel]
        if watch is None:
            return
        self._removing.add(wd)
        try:
            self.inotify.rm_watch(watch)
        except OSError:
            self._removing.discard(wd)
