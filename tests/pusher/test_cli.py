"""``backupd push`` (pre-sync command, one full sync, exit), scheduled and timed-out full syncs,
``backupd status`` and the metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest

from backupd.config.pusher_yaml import load_pusher_yaml
from tests.helpers import assert_trees_equal, free_port, make_tree
from tests.pusher.conftest import PusherThread, wait_converged, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]


def backupd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backupd", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def test_push_runs_the_pre_sync_command_then_one_full_sync(targets, tmp_path, rsync_clients):
    src = make_tree(tmp_path / "src", {"a": "1", "d": {"b": "2"}, "skip.tmp": "x"})
    make_tree(targets["rsyncd"].module, {"stale": "on the target only"})
    sources = [{"path": str(src), "exclude": ["*.tmp"], "pre_sync_command": f"echo dumped > {src}/dump.sql",
                "targets": [t.url for t in targets.values()]}]
    config = write_config(tmp_path / "p.yaml", tmp_path / "state", sources)
    done = backupd("push", "--config", str(config))
    assert done.returncode == 0, done.stderr
    for target in targets.values():
        assert_trees_equal(src, target.module, ignore=["history-backup", "skip.tmp"], check_dir_mtimes=False)
        assert (target.module / "dump.sql").read_text() == "dumped\n"
        assert not (target.module / "skip.tmp").exists()
    rows = json.loads(backupd("status", "--config", str(config), "--json").stdout)
    assert len(rows) == 2 and all(r["last_success"] and r["failures"] == 0 for r in rows), rows  # cron push shows


def test_push_fails_when_a_target_is_down(tmp_path):
    src = make_tree(tmp_path / "src", {"a": "1"})
    sources = [{"path": str(src), "targets": ["rsync://127.0.0.1:1/mod"]}]
    done = backupd("push", "--config", str(write_config(tmp_path / "p.yaml", tmp_path / "s", sources)))
    assert done.returncode == 10, done.stderr  # rsync's "error in socket IO"
    [row] = json.loads(backupd("status", "--config", str(tmp_path / "p.yaml"), "--json").stdout)
    assert row["last_success"] is None and row["failures"] == 1 and "push exit 10" in row["last_error"], row


def test_scheduled_full_sync_without_watching(targets, tmp_path, rsync_clients):
    src = make_tree(tmp_path / "src", {"a": "1"})
    sources = [{"path": str(src), "pre_sync_command": f"date +%s%N >> {tmp_path}/pre.log",
                "targets": [targets["rsyncd"].url]}]
    config = load_pusher_yaml(write_config(tmp_path / "p.yaml", tmp_path / "state", sources, realtime=False,
                                           full_sync={"at_start": True, "interval_s": 1.5}))
    with PusherThread(config) as running:
        assert not wait_converged(src, [targets["rsyncd"]], 20)
        (src / "later").write_text("no watcher: only the schedule brings it")
        assert not wait_converged(src, [targets["rsyncd"]], 20)
        assert running.pusher.sources[0].watcher is None
    assert len((tmp_path / "pre.log").read_text().split()) >= 2


def test_full_sync_timeout_kills_rsync_and_status_shows_it(tmp_path):
    slow = tmp_path / "slow-rsync"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    src = make_tree(tmp_path / "src", {"a": "1"})
    sources = [{"path": str(src), "targets": ["rsync://127.0.0.1:1/mod"]}]
    path = write_config(tmp_path / "p.yaml", tmp_path / "state", sources, rsync={"binary": str(slow)},
                        full_sync={"timeout_s": 0.5})
    config = load_pusher_yaml(path)
    with PusherThread(config) as running:
        worker = running.pusher.sources[0].workers[0]
        assert wait_until(lambda: worker.failures >= 1, 10)
        metrics = generate_latest(running.pusher.metrics.registry).decode()
    done = backupd("status", "--config", str(path), "--json")
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["full_sync_owed"] and row["failures"] >= 1 and "killed" in row["last_error"]
    assert row["state"] == "INITIAL_SYNC" and row["last_success"] is None
    text = backupd("status", "--config", str(path)).stdout
    assert "INITIAL_SYNC" in text and "rsync://127.0.0.1:1/mod" in text
    assert 'backupd_pusher_full_sync_owed{source="' in metrics
    assert f'backupd_pusher_source_state{{source="{src}",state="INITIAL_SYNC"}} 1.0' in metrics
    assert "backupd_pusher_is_leader 1.0" in metrics  # without HA this node is the one that pushes


def test_status_and_metrics_show_depth_lag_and_last_success(targets, tmp_path, rsync_clients):
    src = make_tree(tmp_path / "src", {"a": "1"})
    sources = [{"path": str(src), "targets": [targets["rsyncd"].url]}]
    path = write_config(tmp_path / "p.yaml", tmp_path / "state", sources, delay_s=30)
    with PusherThread(load_pusher_yaml(path)) as running:
        assert not wait_converged(src, [targets["rsyncd"]], 20)
        for j in range(7):
            (src / f"n{j}").write_text("waits for the 30 s window")
        def pending():
            rows = json.loads(backupd("status", "--config", str(path), "--json").stdout)
            return rows if rows[0]["depth"] == 7 else None
        [row] = wait_until(pending, 10)
        assert row["state"] == "REALTIME" and row["last_success"] and row["lag_s"] > 0
        def gauge():
            text = generate_latest(running.pusher.metrics.registry).decode()
            return "backupd_pusher_queue_depth{" in text and ' 7.0' in text and text
        text = wait_until(gauge, 5)
        assert text and "backupd_pusher_last_success_timestamp_seconds{" in text
        port = free_port()
        server = running.pusher.metrics.serve("127.0.0.1", port)  # what `metrics: {port: N}` starts
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                served = reply.read().decode()
        finally:
            server.shutdown()
        assert "backupd_pusher_queue_depth{" in served and "backupd_pusher_lag_seconds{" in served


def test_sersync_logs_dir_holds_the_rsync_logs(targets, tmp_path, rsync_clients):
    import asyncio

    from backupd.config.sersync_conf import parse_sersync_conf
    from backupd.pusher.daemon import push_once

    src = make_tree(tmp_path / "src", {"a": "1"})
    port = targets["rsyncd"].server.port
    conf = (f"listen_dir=('{src}')\nrsyncd_mod=('mod={src}')\nrsyncd_ip=('mod=127.0.0.1:{port}')\n"
            f"state_dir={tmp_path}/state\nlogs_dir={tmp_path}/logs\n")
    config = parse_sersync_conf(conf)
    assert config.logs_dir == tmp_path / "logs"
    assert asyncio.run(push_once(config)) == 0
    assert "=== " in (tmp_path / "logs/push.rsync.log").read_text()
    assert not (tmp_path / "state/push.rsync.log").exists()
