"""HA with a real PostgreSQL: the lease and its fencing, then two pushers on one directory.

The two pushers stand for two hosts sharing a volume: each one's watcher sees
only "its host's" writes (``watch_exclude`` hides the other host's files from
its events, as inotify on NFS would), while a full sync sees everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import psycopg
import pytest

from backupd.config.pusher_model import HaConfig
from backupd.pusher.coalesce import Change, Kind
from backupd.pusher.lease import Lease
from tests.helpers import make_tree
from tests.pusher.conftest import wait_converged, wait_until, write_config

LEASE_S = 3.0


def test_lease_epochs_and_fencing(postgres):
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def main():
        a = Lease(HaConfig(postgres, "A", group, lease_s=1.0))
        b = Lease(HaConfig(postgres, "B", group, lease_s=1.0))
        epoch_a = await a.try_acquire()
        assert epoch_a is not None
        assert await b.try_acquire() is None  # taken
        assert await a.renew(epoch_a)
        await b.append("/src", {b"x": Change(Kind.UPDATE), b"gone": Change(Kind.DELETE, True, True)})
        rows = await a.drain()
        assert [(r.path, r.kind, r.force, r.node) for r in rows] == [(b"x", 1, False, "B"), (b"gone", 3, True, "B")]
        await asyncio.sleep(1.3)  # A stops renewing: the lease expires
        epoch_b = await b.try_acquire()
        assert epoch_b == epoch_a + 1  # the fencing token grew
        assert not await a.renew(epoch_a)
        assert not await a.delete_through(epoch_a, rows[-1].id)  # deposed: rows stay
        assert len(await b.drain()) == 2
        assert await b.delete_through(epoch_b, rows[-1].id)
        assert await b.drain() == []
        assert (await b.holder())[:2] == ("B", epoch_b)
        await b.release(epoch_b)
        assert await a.try_acquire() == epoch_b + 1  # released: free at once
        await a.close()
        await b.close()

    asyncio.run(main())


def _node_config(tmp_path, name, other, src, targets, wrapper, postgres, group):
    sources = [{"path": str(src), "watch_exclude": [f"re:^{other}-"],
                "targets": [t.url for t in targets.values()]}]
    return write_config(
        tmp_path / f"{name}.yaml", tmp_path / f"state-{name}", sources,
        rsync={"binary": str(wrapper)}, ha={"dsn": postgres, "node_id": name, "group": group, "lease_s": LEASE_S},
    )


def _wrapper(tmp_path, name, runs):
    path = tmp_path / f"rsync-{name}"
    path.write_text(f'#!/bin/sh\necho {name} >> "{runs}"\nexec /usr/bin/rsync "$@"\n')
    path.chmod(0o755)
    return path


@pytest.mark.slow
def test_two_pushers_one_leader_takeover(postgres, targets, spawn_watch, tmp_path, rsync_clients):
    group = f"g-{uuid.uuid4().hex[:8]}"
    src = make_tree(tmp_path / "src", {"seed": {f"s{j}": f"{j}" for j in range(20)}})
    runs = tmp_path / "rsync-runs.log"
    configs = {n: _node_config(tmp_path, n, o, src, targets, _wrapper(tmp_path, n, runs), postgres, group)
               for n, o in (("a", "b"), ("b", "a"))}

    def holder():
        with psycopg.connect(postgres) as conn:
            row = conn.execute("SELECT holder, epoch FROM backupd_lease WHERE grp = %s", (group,)).fetchone()
        return row

    leader = spawn_watch(configs["a"], name="a")
    assert wait_until(lambda: (h := holder()) and h[0] == "a", 20), leader.text()
    follower = spawn_watch(configs["b"], name="b")
    assert wait_until(lambda: "watching" in follower.text(), 20), follower.text()
    assert not wait_converged(src, targets.values(), 30), leader.text()

    for j in range(30):  # "host a" and "host b" write; each watcher sees its own
        (src / f"a-{j}").write_text(f"from a {j}")
        (src / f"b-{j}").write_text(f"from b {j}")
    (src / "seed/s0").unlink()  # seen by both: journaled twice, pushed once
    assert not wait_converged(src, targets.values(), 30), leader.text() + follower.text()
    assert set(runs.read_text().split()) == {"a"}, "the follower ran rsync"
    assert "leader now" not in follower.text()

    before = len(runs.read_text().split())
    leader.kill()  # SIGKILL: the lease is not released
    killed = time.monotonic()
    (src / "a-late").write_text("written on host a, never journaled")
    (src / "b-late").write_text("written on host b")
    took = wait_until(lambda: holder()[0] == "b" and time.monotonic() - killed, 3 * LEASE_S)
    assert took, follower.text()
    first_push = wait_until(lambda: "b" in runs.read_text().split()[before:] and time.monotonic() - killed,
                            3 * LEASE_S + 10)
    assert first_push, follower.text()
    print(f"takeover: lease taken {took:.2f} s after the leader's kill -9, new leader's first push after"
          f" {first_push:.2f} s (lease {LEASE_S} s)")
    assert took <= LEASE_S + LEASE_S / 3 + 1.5
    for j in range(10):
        (src / f"b-after-{j}").write_text("after the takeover")
    assert not wait_converged(src, targets.values(), 30), follower.text()
    assert set(runs.read_text().split()[before:]) == {"b"}
    assert wait_until(lambda: _journal_empty(postgres, group), 10)  # drained
    follower.proc.send_signal(signal.SIGTERM)
    assert follower.proc.wait(20) == 0
    assert holder()[0] == "b" and os.path.exists(src / "a-late")


def _journal_empty(dsn, group) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM backupd_journal WHERE grp = %s", (group,)).fetchone()[0] == 0


class StallingProxy:
    """A TCP proxy to PostgreSQL on 127.0.0.1 that the test can stall (a network partition).

    While stalled it keeps every connection open and forwards nothing, so the
    client sees a database that never answers (no reset, no error).
    """

    def __init__(self, upstream_port: int) -> None:
        import socket
        import threading

        self.upstream_port = upstream_port
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.socks: list = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst) -> None:
        src.settimeout(0.2)
        while not self.closing.is_set():
            if self.stalled.is_set():
                time.sleep(0.05)
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        for s in self.socks:
            s.close()


@pytest.mark.slow
def test_a_partitioned_leader_stops_pushing_within_the_lease(postgres, targets, spawn_watch, tmp_path,
                                                             rsync_clients):
    group = f"g-{uuid.uuid4().hex[:8]}"
    port = int(postgres.split("port=")[1].split()[0])
    proxy = StallingProxy(port)
    via_proxy = postgres.replace(f"port={port}", f"port={proxy.port}")
    src = make_tree(tmp_path / "src", {"seed": {f"s{j}": f"{j}" for j in range(5)}})
    runs = tmp_path / "rsync-runs.log"
    configs = {"a": _node_config(tmp_path, "a", "b", src, targets, _wrapper(tmp_path, "a", runs), via_proxy, group),
               "b": _node_config(tmp_path, "b", "a", src, targets, _wrapper(tmp_path, "b", runs), postgres, group)}

    def holder():
        with psycopg.connect(postgres) as conn:
            try:
                return conn.execute("SELECT holder FROM backupd_lease WHERE grp = %s", (group,)).fetchone()
            except psycopg.errors.UndefinedTable:  # no node has connected yet
                return None

    try:
        leader = spawn_watch(configs["a"], name="a")
        assert wait_until(lambda: (h := holder()) and h[0] == "a", 20), leader.text()
        follower = spawn_watch(configs["b"], name="b")
        assert wait_until(lambda: "watching" in follower.text(), 20), follower.text()
        assert not wait_converged(src, targets.values(), 30), leader.text()

        proxy.stalled.set()  # the leader's database path hangs; the follower's does not
        stalled = time.monotonic()
        stepped = wait_until(lambda: "not leader any more" in leader.text() and time.monotonic() - stalled,
                             3 * LEASE_S)
        assert stepped, leader.text()[-3000:]
        print(f"partitioned leader stopped after {stepped:.2f} s (lease {LEASE_S} s)")
        # its lease ends LEASE_S after its last renewal, at most LEASE_S / 3 before the stall
        assert stepped <= LEASE_S + 0.5, leader.text()[-3000:]
        runs_at_stop = runs.read_text().split()
        took = wait_until(lambda: holder()[0] == "b" and time.monotonic() - stalled, 3 * LEASE_S)
        assert took, follower.text()
        assert took >= stepped - 0.5, "the new leader took over while the old one still pushed"
        for j in range(5):
            (src / f"a-after-{j}").write_text("written on host a after the partition")
            (src / f"b-after-{j}").write_text("written on host b after the partition")
        assert wait_until(lambda: all((t.module / "b-after-4").exists() for t in targets.values()), 30)
        print(f"partitioned: new leader took the lease after {took:.2f} s; writes after the partition on both"
              f" targets {time.monotonic() - stalled:.2f} s after the stall")
        after = runs.read_text().split()[len(runs_at_stop):]
        assert set(after) <= {"b"}, "the partitioned leader ran rsync after stepping down"
    finally:
        proxy.close()
