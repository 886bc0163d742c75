"""The journal spill (changes PostgreSQL did not take) and the daemon heartbeat, in isolation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from backupd.config.pusher_yaml import load_pusher_yaml
from backupd.pusher.coalesce import Change, Kind
from backupd.pusher.heartbeat import Heartbeat, is_alive, read_heartbeat, write_heartbeat
from backupd.pusher.spill import SpillStore, journal_with_spill, spilled_count
from backupd.pusher.status import collect_status, format_status
from tests.helpers import make_tree
from tests.pusher.conftest import PusherThread, wait_until, write_config


def test_spill_merges_a_path_and_keeps_a_row_written_again(tmp_path):
    spill = SpillStore(tmp_path)
    spill.add("/src", {b"a": Change(Kind.UPDATE), b"b": Change(Kind.UPDATE)})
    spill.add("/src", {b"a": Change(Kind.DELETE)})  # a later delete of a: one row, the delete
    taken = spill.oldest("/src")
    assert {p: c for p, (c, _seq) in taken.items()} == {b"b": Change(Kind.UPDATE), b"a": Change(Kind.DELETE)}
    assert list(taken) == [b"b", b"a"]  # oldest write first
    spill.add("/src", {b"b": Change(Kind.DELETE)})  # written again while `taken` was being journaled
    spill.remove("/src", taken)
    assert {p: c for p, (c, _s) in spill.oldest("/src").items()} == {b"b": Change(Kind.DELETE)}
    assert (spill.count("/src"), spill.count("/other"), spilled_count(tmp_path, "/src")) == (1, 0, 1)
    spill.close()
    assert spilled_count(tmp_path / "none", "/src") == 0


def test_journal_with_spill_keeps_what_failed_and_journals_it_first(tmp_path):
    spill = SpillStore(tmp_path)
    calls: list[dict] = []
    down = True

    async def append(source, changes):
        if down:
            raise ConnectionError("database down")
        calls.append(dict(changes))

    async def main():
        nonlocal down
        for name in (b"x", b"y"):
            with pytest.raises(ConnectionError):
                await journal_with_spill(spill, "/src", {name: Change(Kind.UPDATE)}, append)
        assert spill.count("/src") == 2 and calls == []
        down = False
        await journal_with_spill(spill, "/src", {b"z": Change(Kind.UPDATE)}, append)

    asyncio.run(main())
    assert calls == [{b"x": Change(Kind.UPDATE), b"y": Change(Kind.UPDATE)}, {b"z": Change(Kind.UPDATE)}]
    assert spill.count("/src") == 0
    spill.close()


def test_heartbeat_round_trip_and_liveness(tmp_path):
    now = time.time_ns()
    beat = Heartbeat(pid=os.getpid(), at_ns=now, role="leader", node="a", epoch=4, journal_backlog=2,
                     unjournaled={"/src": 3})
    write_heartbeat(tmp_path, beat)
    assert read_heartbeat(tmp_path) == beat
    assert is_alive(beat, now + 1_000_000_000)
    assert not is_alive(beat, now + 11_000_000_000)  # stale: hung or stopped
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not is_alive(Heartbeat(pid=gone.pid, at_ns=now, role="none"), now)
    (tmp_path / "pusher.heartbeat.json").write_text("{half")
    assert read_heartbeat(tmp_path) is None and not is_alive(None)


def test_status_of_a_daemon_without_ha(tmp_path):
    src = make_tree(tmp_path / "src", {"a": "1"})
    path = write_config(tmp_path / "p.yaml", tmp_path / "state", [{"path": str(src),
                        "targets": ["rsync://127.0.0.1:1/mod"]}])
    config = load_pusher_yaml(path)
    assert [(r.daemon_alive, r.daemon_pid, r.role) for r in collect_status(config)] == [(False, None, "none")]
    assert "daemon: never ran (no heartbeat); role none" in format_status(collect_status(config))
    with PusherThread(config):
        rows = wait_until(lambda: (r := collect_status(config)) and r[0].daemon_alive and r, 10)
        assert rows and (rows[0].daemon_pid, rows[0].role, rows[0].epoch, rows[0].unjournaled) == (
            os.getpid(), "none", None, 0)
        assert format_status(rows).startswith(f"daemon: alive, pid {os.getpid()}, heartbeat ")


def test_a_worker_stops_even_when_a_step_swallows_the_cancellation():
    """Python 3.11's wait_for returns the inner result (e.g. a refused probe) when a cancel lands with it."""
    from backupd.pusher.worker import TargetWorker

    class Swallowing:
        steps = 0

        async def step(self):
            self.steps += 1
            if self.steps > 100:  # bounded: a worker that never stops fails the test, not the run
                raise RuntimeError("the worker loop ignored its cancellation")
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass  # what wait_for did: the cancellation is lost

    async def main():
        fake = Swallowing()
        task = asyncio.ensure_future(TargetWorker.run(fake))
        await asyncio.sleep(0.2)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=8)
        assert done == {task} and task.cancelled()
        return fake.steps

    assert asyncio.run(main()) >= 2


def test_bounded_returns_on_time_when_the_call_holds_on_to_its_cancellation():
    """As psycopg does mid-query: the first cancel starts a 5 s server-side cancel; a second one ends it."""
    from backupd.pusher.lease import bounded

    ended = []

    async def stubborn():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            try:
                await asyncio.sleep(5)  # "cancelling the query in the server"
            finally:
                ended.append(time.monotonic())
            raise

    async def main():
        background: set = set()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await bounded(stubborn(), 0.3, background)
        returned = time.monotonic() - start
        assert background  # the reaper keeps cancelling it
        await asyncio.wait(background, timeout=5)
        assert await bounded(asyncio.sleep(0, result=7), 1.0, background) == 7
        return returned, ended[0] - start

    returned, gone = asyncio.run(main())
    assert returned < 0.6 and gone < 1.5, (returned, gone)
