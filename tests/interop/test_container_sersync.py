"""The two container modes for real (no Docker), as a pair on loopback.

RUN_MODE=rsyncd serves a module; RUN_MODE=sersync renders the pusher config
from the environment and execs ``backupd watch``, which pushes a source
directory into that module with the stock rsync client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupd.ops.entrypoint import healthcheck
from tests.helpers import (
    ServerProcess,
    client_350_or_skip,
    free_port,
    kill_group,
    make_tree,
    scrape_metrics,
)

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "container" / "entrypoint.sh"


@pytest.fixture(scope="module")
def client():
    return client_350_or_skip()


def base_env(**more) -> dict:
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "BACKUPD_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        **more,
    }


def wait_until(check, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


scrape = scrape_metrics


def pushed(samples: dict[tuple, float]) -> bool:
    """Every target of the pusher: nothing queued, and a last success."""
    depth = {dict(k[1])["target"]: v for k, v in samples.items() if k[0] == "backupd_pusher_queue_depth"}
    done = {
        dict(k[1])["target"]: v for k, v in samples.items() if k[0] == "backupd_pusher_last_success_timestamp_seconds"
    }
    return bool(depth) and all(v == 0 for v in depth.values()) and set(done) == set(depth)


def test_sersync_mode_pushes_into_rsyncd_mode(tmp_path, client):
    data, src = (
        tmp_path / "data",
        make_tree(tmp_path / "src", {"a.txt": b"first", "sub": {"b.txt": b"bee"}}),
    )
    data.mkdir()
    port, mport = free_port(), free_port()
    server = ServerProcess(
        argv=[str(WRAPPER)],
        port=port,
        log_path=tmp_path / "server.log",
        cwd=tmp_path,
        env=base_env(
            RUN_MODE="rsyncd",
            RUN_AS="root",
            BACKUPD_CONFIG_DIR=str(tmp_path / "etc-server"),
            RSYNCD_PATH=str(data),
            RSYNCD_PORT=str(port),
            RSYNCD_ADDRESS="127.0.0.1",
            RSYNCD_MOD_NAME="backup1",
            RSYNCD_PASSWD="pw",
            METRICS_ADDRESS="",
        ),
    ).start(timeout_s=15)
    pusher_env = base_env(
        RUN_MODE="sersync",
        BACKUPD_CONFIG_DIR=str(tmp_path / "etc-pusher"),
        BACKUPD_STATE_DIR=str(tmp_path / "state"),
        LISTEN_DIR=f"files={src}",
        RSYNCD_IP=f"127.0.0.1:{port}",
        RSYNCD_MOD_NAME="backup1",
        RSYNCD_PASSWD="pw",
        REAL_TIME_SYNC_DELAY="0.2",
        METRICS_ADDRESS=f"127.0.0.1:{mport}",
    )
    with open(tmp_path / "pusher.log", "wb") as log:
        pusher = subprocess.Popen(
            [str(WRAPPER)],
            env=pusher_env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        target = data / "files"
        wait_until(lambda: (target / "sub" / "b.txt").is_file(), "the full sync at start")
        assert (target / "a.txt").read_bytes() == b"first"
        (src / "a.txt").write_bytes(b"second")
        wait_until(lambda: (target / "a.txt").read_bytes() == b"second", "the change to be pushed")
        kept = list((data / "history-backup").rglob("a.txt"))
        assert [p.read_bytes() for p in kept] == [b"first"]
        assert (tmp_path / "etc-pusher" / "rsync.passwd").stat().st_mode & 0o777 == 0o600
        wait_until(lambda: healthcheck(pusher_env) == 0, "the pusher's heartbeat")
        wait_until(lambda: pushed(scrape(mport)), "queue depth 0 and a last success per target")
    except AssertionError:
        print((tmp_path / "pusher.log").read_text(errors="replace"))
        raise
        kill_group(pusher, grace_s=0)
        assert healthcheck(pusher_env) == 1  # killed: its heartbeat names a dead pid
    finally:
        kill_group(pusher)
        server.stop()
