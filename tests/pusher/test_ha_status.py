"""``backupd status`` of an HA node, with a real PostgreSQL: role, epoch, journal backlog, spill, heartbeat.

One node (``b``) in a group whose lease another holder keeps (a row the
test writes), so it stays standby and its journal rows stay: status must
count them. Its database path goes through a proxy the test stalls: the
changes it cannot journal go to the local spill, status shows them, a
kill -9 keeps them, and the restarted node journals them once the database
answers. When the lease is freed the node leads, with the next epoch, and
pushes everything to real targets (backupd and stock rsyncd).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from tests.helpers import free_port, make_tree, scrape_metrics
from tests.pusher.conftest import wait_converged, wait_until, write_config
from tests.pusher.test_ha import LEASE_S, StallingProxy

pytestmark = pytest.mark.slow


def status(config) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "backupd", "status", "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def status_text(config) -> str:
    return subprocess.run([sys.executable, "-m", "backupd", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=True).stdout


def journal_paths(dsn: str, group: str) -> list[bytes]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT path FROM backupd_journal WHERE grp = %s AND kind <> 0", (group,)).fetchall()
    return [bytes(r[0]) for r in rows]


def journal_rows(dsn: str, group: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM backupd_journal WHERE grp = %s", (group,)).fetchone()[0]


def hold_lease(dsn: str, group: str, epoch: int, seconds: float) -> None:
    """Write the group's lease row: holder ``other`` until now + ``seconds`` (negative: expired)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS backupd_lease (grp TEXT PRIMARY KEY, holder TEXT NOT NULL,"
                     " epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)")
        conn.execute("INSERT INTO backupd_lease VALUES (%s, 'other', %s, now() + make_interval(secs => %s))"
                     " ON CONFLICT (grp) DO UPDATE SET holder = 'other', epoch = EXCLUDED.epoch,"
                     " expires_at = EXCLUDED.expires_at", (group, epoch, seconds))


def test_status_shows_role_epoch_backlog_spill_and_heartbeat(postgres, targets, spawn_watch, tmp_path,
                                                            rsync_clients):
    group = f"g-{uuid.uuid4().hex[:8]}"
    port = int(postgres.split("port=")[1].split()[0])
    proxy = StallingProxy(port)
    hold_lease(postgres, group, epoch=7, seconds=3600)
    src = make_tree(tmp_path / "src", {"seed": "before"})
    mport = free_port()
    config = write_config(
        tmp_path / "b.yaml", tmp_path / "state-b",
        [{"path": str(src), "targets": [t.url for t in targets.values()]}],
        ha={"dsn": postgres.replace(f"port={port}", f"port={proxy.port}"), "node_id": "b", "group": group,
            "lease_s": LEASE_S},
        metrics={"address": "127.0.0.1", "port": mport},
    )
    try:
        node = spawn_watch(config, name="b")
        rows = wait_until(lambda: (r := status(config)) and r[0]["daemon_alive"] and r, 30)
        assert rows, node.text()
        assert [(r["role"], r["epoch"], r["daemon_pid"]) for r in rows] == [("standby", None, node.proc.pid)] * 2
        assert wait_until(lambda: "watching" in node.text(), 20), node.text()

        for j in range(5):
            (src / f"j{j}").write_text("journaled, not drained: the leader is elsewhere")
        assert wait_until(lambda: len(set(journal_paths(postgres, group))) >= 5, 30), node.text()
        assert wait_until(lambda: status(config)[0]["journal_backlog"] == journal_rows(postgres, group) >= 5, 30), \
            status(config)

        proxy.stalled.set()  # the database stops answering this node
        time.sleep(LEASE_S / 3 + 0.5)  # the flush under way times out
        spilled = [f"s{j}" for j in range(20)]
        for name in spilled:
            (src / name).write_text("written while PostgreSQL is unreachable")
        rows = wait_until(lambda: (r := status(config)) and r[0]["spilled"] >= 20 and r, 30)
        assert rows, node.text()[-3000:]
        assert rows[0]["daemon_alive"] and rows[0]["role"] == "standby" and rows[0]["unjournaled"] >= 20
        text = status_text(config)
        assert f"daemon: alive, pid {node.proc.pid}" in text and "role standby" in text
        assert "UNJOURNALED" in text
        unjournaled = ("backupd_pusher_unjournaled", (("source", str(src)),))
        got = wait_until(lambda: (m := scrape_metrics(mport)).get(unjournaled, 0) >= 20 and m, 15)
        assert got and got[("backupd_pusher_lease_epoch", ())] == 0

        node.kill()  # kill -9 while the changes sit in the spill
        rows = wait_until(lambda: (r := status(config)) and not r[0]["daemon_alive"] and r, 30)
        assert rows and rows[0]["unjournaled"] == rows[0]["spilled"] >= 20  # on local disk: nothing lost
        assert "NOT RUNNING" in status_text(config)
        assert not set(journal_paths(postgres, group)) & {n.encode() for n in spilled}

        proxy.stalled.clear()
        again = spawn_watch(config, name="b-again")
        assert wait_until(lambda: {n.encode() for n in spilled} <= set(journal_paths(postgres, group)), 30), \
            again.text()
        rows = wait_until(lambda: (r := status(config)) and r[0]["daemon_alive"] and r[0]["unjournaled"] == 0
                          and r, 30)
        assert rows and rows[0]["daemon_pid"] == again.proc.pid, status(config)

        hold_lease(postgres, group, epoch=7, seconds=-1)  # the other holder's lease ends: b takes over
        rows = wait_until(lambda: (r := status(config)) and r[0]["role"] == "leader" and r, 30)
        assert rows and [r["epoch"] for r in rows] == [8, 8], again.text()[-3000:]
        assert not wait_converged(src, targets.values(), 60), again.text()[-3000:]
        assert wait_until(lambda: status(config)[0]["journal_backlog"] == 0, 30), status(config)
        assert "role leader, epoch 8, journal backlog 0" in status_text(config)
        got = wait_until(lambda: (m := scrape_metrics(mport))[("backupd_pusher_journal_backlog", ())] == 0 and m, 15)
        assert got and got[("backupd_pusher_lease_epoch", ())] == 8
    finally:
        proxy.close()
