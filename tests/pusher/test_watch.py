"""The watcher on a real inotify: new dirs without a race, moves, excludes, overflow, lost watches."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

from asyncinotify import Mask

from backupd.pusher import watch as watch_mod
from backupd.pusher.coalesce import Kind, PathEvent
from backupd.pusher.excludes import ExcludeRules
from backupd.pusher.source_state import Loss
from backupd.pusher.watch import SourceWatcher

U, T, D = Kind.UPDATE, Kind.TREE, Kind.DELETE


class Harness:
    def __init__(self, root: Path, rules=()) -> None:
        self.events: list[PathEvent] = []
        self.losses: list[Loss] = []
        self.watcher = SourceWatcher(root, ExcludeRules(rules), self.events.append, self.losses.append)

    async def __aenter__(self) -> Harness:
        self.watcher.start()
        self.task = asyncio.ensure_future(self.watcher.run())
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.watcher.close()

    async def settle(self, seconds: float = 0.3) -> list[PathEvent]:
        await asyncio.sleep(seconds)
        out, self.events[:] = list(self.events), []
        return out


def paths(events, kind=None) -> set[bytes]:
    return {e.path for e in events if kind is None or e.kind is kind}


def test_files_dirs_and_the_new_dir_race(tmp_path):
    async def main():
        (tmp_path / "old").write_text("x")
        async with Harness(tmp_path) as h:
            (tmp_path / "new").write_text("1")
            (tmp_path / "old").write_text("2")
            (tmp_path / "old").unlink()
            os.makedirs(tmp_path / "a/b/c")  # nested dirs created before any watch on them
            (tmp_path / "a/b/c/f").write_text("f")
            ev = await h.settle()
            assert {e.path: e.kind for e in ev if e.path in (b"new", b"old")} == {b"new": U, b"old": D}
            assert PathEvent(b"a", T, True) in ev
            (tmp_path / "a/b/c/g").write_text("later")  # the nested dir has its watch now
            assert paths(await h.settle(), U) == {b"a/b/c/g"}

    asyncio.run(main())


def test_moves_in_out_and_within(tmp_path, monkeypatch):
    monkeypatch.setattr(watch_mod, "MOVE_PAIR_S", 0.1)
    src, outside = tmp_path / "src", tmp_path / "outside"
    os.makedirs(src / "d/sub")
    os.makedirs(outside / "tree/deep")

    async def main():
        async with Harness(src) as h:
            os.rename(src / "d", src / "e")  # within: watches follow
            ev = await h.settle()
            assert PathEvent(b"d", D, True) in ev and PathEvent(b"e", T, True) in ev
            (src / "e/sub/f").write_text("1")
            assert paths(await h.settle(), U) == {b"e/sub/f"}
            os.rename(outside / "tree", src / "tree")  # in: a TREE, its subdirs watched
            assert PathEvent(b"tree", T, True) in await h.settle()
            (src / "tree/deep/x").write_text("1")
            assert paths(await h.settle(), U) == {b"tree/deep/x"}
            os.rename(src / "e", outside / "e")  # out: a DELETE, then its watches go
            assert PathEvent(b"e", D, True) in await h.settle(0.3)
            (src / "touch").write_text("tick")  # any later event expires the move
            await h.settle()
            (outside / "e/sub/g").write_text("not ours")
            assert not [e for e in await h.settle() if e.path.startswith(b"e")]
            assert not h.losses

    asyncio.run(main())


def test_excludes_apply_before_queueing(tmp_path):
    async def main():
        async with Harness(tmp_path, ["*.tmp", "re:^cache"]) as h:
            (tmp_path / "a.tmp").write_text("1")
            os.makedirs(tmp_path / "cache/x")
            (tmp_path / "cache/x/f").write_text("1")
            (tmp_path / "kept").write_text("1")
            assert paths(await h.settle()) == {b"kept"}
            assert b"cache" not in h.watcher.path_wd  # excluded dirs get no watch

    asyncio.run(main())


def test_real_queue_overflow_is_reported(tmp_path):
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    files = limit // 2 + 1000  # create + close_write each: past the kernel's queue

    async def main():
        h = Harness(tmp_path)
        h.watcher.start()  # nobody reads yet
        for i in range(files):
            fd = os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            os.close(fd)
        task = asyncio.ensure_future(h.watcher.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if h.losses:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        h.watcher.close()
        assert h.losses == [Loss.OVERFLOW]

    asyncio.run(main())


def test_lost_watch_and_deleted_root(tmp_path):
    async def main():
        os.makedirs(tmp_path / "src/d")
        async with Harness(tmp_path / "src") as h:
            wd = h.watcher.path_wd[b"d"]
            fake = SimpleNamespace(mask=Mask.IGNORED, watch=SimpleNamespace(wd=wd), name=None, cookie=0)
            h.watcher.handle(fake)  # dropped by the kernel, directory still there
            assert h.losses == [Loss.WATCH_LOST]
            os.rmdir(tmp_path / "src/d")  # a deleted dir's IGNORED is no loss
            await h.settle()
            assert h.losses == [Loss.WATCH_LOST]
            os.rmdir(tmp_path / "src")
            await h.settle()
            assert h.losses[-1] is Loss.WATCH_LOST and len(h.losses) >= 2

    asyncio.run(main())
