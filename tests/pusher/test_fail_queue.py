"""The per-target fail queue against real targets (a backupd server and a stock rsyncd).

Each module refuses one name (a module ``exclude`` rule: the client prints
``ERROR: daemon refused to receive file "blocked.txt"`` and exits 23). That
path must not hold back the others: 60 new files made over ~30 s each
arrive within the delay plus one run; the refused path waits in the fail
queue, is retried on its own, and status and metrics show it with its line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from prometheus_client import generate_latest

from backupd.config.pusher_yaml import load_pusher_yaml
from tests.helpers import make_tree
from tests.pusher.conftest import PusherThread, wait_converged, wait_until, write_config

pytestmark = pytest.mark.slow

DELAY_S = 1.0
RUN_BUDGET_S = 4.0  # one rsync run on a loaded 2-core machine, and the poll
REFUSED = 'ERROR: daemon refused to receive file "blocked.txt"'


def _status(config) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "backupd", "status", "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def _sample(registry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_one_refused_path_does_not_hold_back_the_rest(make_targets, tmp_path, rsync_clients):
    targets = make_targets(exclude="blocked.txt")
    src = make_tree(tmp_path / "src", {"seed.txt": "seed\n", "blocked.txt": "never lands\n"})
    sources = [{"path": str(src), "targets": [t.url for t in targets.values()]}]
    # the default backoff shape (doubling to minutes): a stalled target would show in the lags
    config = write_config(tmp_path / "pusher.yaml", tmp_path / "state", sources, delay_s=DELAY_S,
                          queue={"retry_min_s": 2.0, "retry_max_s": 300.0}, full_sync={"at_start": True})
    with PusherThread(load_pusher_yaml(config)) as running:
        assert not wait_converged(src, targets.values(), 30, ignore=[b"blocked.txt"])
        rows = wait_until(lambda: (r := _status(config)) and all(x["state"] == "REALTIME" for x in r) and r, 20)
        assert rows, _status(config)  # one refused path does not pin the source in INITIAL_SYNC

        lags: list[float] = []
        made: dict[str, float] = {}
        deadline = time.monotonic() + 90
        for i in range(60):
            name = f"new-{i:02}.txt"
            (src / name).write_text(f"file {i}\n")
            made[name] = time.monotonic()
            if i == 20:
                (src / "blocked.txt").write_text("refused again, in a batch with others\n")
            end = time.monotonic() + 0.5
            while time.monotonic() < end:  # poll the arrivals while making the next ones
                for name, at in list(made.items()):
                    if all((t.module / name).exists() for t in targets.values()):
                        lags.append(time.monotonic() - at)
                        del made[name]
                time.sleep(0.05)
        while made and time.monotonic() < deadline:
            for name, at in list(made.items()):
                if all((t.module / name).exists() for t in targets.values()):
                    lags.append(time.monotonic() - at)
                    del made[name]
            time.sleep(0.05)
        assert not made, f"never arrived: {sorted(made)}"
        print(f"arrival lag over 60 files: max {max(lags):.2f} s, mean {sum(lags) / len(lags):.2f} s")
        assert max(lags) <= DELAY_S + RUN_BUDGET_S, sorted(lags)[-5:]
        assert not wait_converged(src, targets.values(), 10, ignore=[b"blocked.txt"])

        registry = running.pusher.metrics.registry
        for target in targets.values():
            assert not (target.module / "blocked.txt").exists()
            pair = {"source": str(src), "target": target.url}
            assert _sample(registry, "backupd_pusher_failing_paths", **pair) == 1
            assert _sample(registry, "backupd_pusher_failing_path_failures", **pair, path="blocked.txt",
                           error=REFUSED) >= 2
            assert _sample(registry, "backupd_pusher_rsync_runs_total", **pair, kind="retry", result="partial") >= 1
            # the full sync at start failed on it too, and nothing escalated to another one
            assert _sample(registry, "backupd_pusher_rsync_runs_total", **pair, kind="full", result="partial") == 1
        assert "backupd_pusher_failing_path_failures{" in generate_latest(registry).decode()

    rows = _status(config)
    assert len(rows) == 2
    for row in rows:
        assert row["state"] == "REALTIME" and row["depth"] == 0 and row["failing"] == 1, row
        [(path, failures, line)] = row["failing_paths"]
        assert path == "blocked.txt" and failures >= 2 and line == REFUSED, row
    text = subprocess.run([sys.executable, "-m", "backupd", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert text.count("failing path blocked.txt") == 2 and REFUSED in text, text


def _chattr(flag: str, path) -> bool:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def test_an_immutable_path_waits_in_the_fail_queue_until_fixed(targets, tmp_path, rsync_clients):
    src = make_tree(tmp_path / "src", {"seed.txt": "seed\n", "locked.txt": "v1\n"})
    sources = [{"path": str(src), "targets": [t.url for t in targets.values()]}]
    config = write_config(tmp_path / "pusher.yaml", tmp_path / "state", sources, delay_s=0.3,
                          queue={"retry_min_s": 0.5, "retry_max_s": 1.0})
    locked = [t.module / "locked.txt" for t in targets.values()]
    with PusherThread(load_pusher_yaml(config)):
        assert not wait_converged(src, targets.values(), 30)
        if not all(_chattr("+i", p) for p in locked):
            pytest.skip("chattr +i is not supported here")
        try:
            (src / "locked.txt").write_text("v2, refused by the target's file system\n")
            (src / "ok.txt").write_text("lands\n")
            rows = wait_until(lambda: (r := _status(config)) and all(x["failing"] == 1 for x in r) and r, 20)
            assert rows, _status(config)
            for row in rows:
                [(path, _failures, line)] = row["failing_paths"]
                assert path == "locked.txt" and line.startswith("rsync: ") and "locked.txt" in line, row
            assert all((t.module / "ok.txt").read_text() == "lands\n" for t in targets.values())
        finally:
            for p in locked:
                _chattr("-i", p)
        # fixed on the target: the path's own retry settles it
        assert wait_until(lambda: all(x["failing"] == 0 for x in _status(config)), 20), _status(config)
        assert not wait_converged(src, targets.values(), 20)


def test_a_returning_target_is_caught_up_without_waiting_out_the_backoff(targets, tmp_path, rsync_clients):
    target = targets["rsyncd"]
    src = make_tree(tmp_path / "src", {"seed.txt": "seed\n"})
    sources = [{"path": str(src), "targets": [target.url]}]
    # the first failure alone backs off 60 s: only probing the target catches up sooner
    config = write_config(tmp_path / "pusher.yaml", tmp_path / "state", sources, delay_s=0.3,
                          queue={"retry_min_s": 60.0, "retry_max_s": 300.0})
    with PusherThread(load_pusher_yaml(config)):
        assert not wait_converged(src, [target], 30)
        target.server.stop()
        (src / "while-down.txt").write_text("queued while the target is down\n")
        assert wait_until(lambda: _status(config)[0]["failures"] >= 1, 20), _status(config)
        target.server = target.restart()
        back = time.monotonic()
        assert not wait_converged(src, [target], 15)
        print(f"caught up {time.monotonic() - back:.2f} s after the target returned")
        assert wait_until(lambda: _status(config)[0]["failures"] == 0, 5)
