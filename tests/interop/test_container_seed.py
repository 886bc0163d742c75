"""The seed image's two ``docker run`` forms, run for real through container/entrypoint.sh (no Docker).

(a) the server from environment variables, no RUN_MODE (the seed's
    ``-e RSYNCD_USER -e RSYNCD_PASSWD -e RSYNCD_MAX_CONN=300 ...``);
(b) the pusher from a mounted sersync.conf and nothing else (the seed's
    ``-v .../sersync.conf:/usr/local/sersync/etc/sersync.conf``, no RUN_MODE).

Only what a container would provide differently is set: the fake root's
paths (BACKUPD_CONFIG_DIR, RSYNCD_PATH, SERSYNC_CONF_PATH for the mount
point), a free port, and RUN_AS=root for the server (no ``backupd`` user
here). The stock rsync client pushes; the HEALTHCHECK runs with the same
environment, as Docker runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupd.ops.entrypoint import healthcheck
from tests.helpers import ServerProcess, assert_trees_equal, client_350_or_skip, free_port, kill_group, make_tree
from tests.ops.test_entrypoint_seed import seed_sersync_conf

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "container" / "entrypoint.sh"


@pytest.fixture(scope="module")
def client():
    return client_350_or_skip()


def process_env(**env) -> dict:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "BACKUPD_PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1", **env}


def wait_until(check, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


def seed_server(tmp_path: Path) -> tuple[ServerProcess, dict]:
    """Form (a): the seed's server environment, no RUN_MODE."""
    data = tmp_path / "data"
    data.mkdir()
    env = {"RSYNCD_USER": "rsync", "RSYNCD_PASSWD": "secret", "RSYNCD_MOD_NAME": "backup1",
           "RSYNCD_MAX_CONN": "300", "RSYNCD_HOSTS_ALLOW": "127.0.0.1", "KEEP_HISTORY_BACKUP_DAYS": "30",
           "RSYNCD_PATH": str(data), "RSYNCD_PORT": str(free_port()), "BACKUPD_CONFIG_DIR": str(tmp_path / "etc"),
           "SERSYNC_CONF_PATH": str(tmp_path / "nothing-mounted"), "RUN_AS": "root", "METRICS_ADDRESS": ""}
    server = ServerProcess(argv=[str(WRAPPER)], port=int(env["RSYNCD_PORT"]), log_path=tmp_path / "server.log",
                           cwd=tmp_path, env=process_env(**env))
    return server.start(timeout_s=20), env


def test_seed_server_form_serves_and_is_healthy(tmp_path, client):
    server, env = seed_server(tmp_path)
    try:
        src = make_tree(tmp_path / "src", {"a.txt": "one", "d": {"b": "bee"}})
        pw = tmp_path / "pw"
        pw.write_text("secret\n")
        pw.chmod(0o600)
        done = client.run("-a", f"--password-file={pw}", f"{src}/", server.url("backup1", "", user="rsync"))
        assert done.returncode == 0, done.stderr + server.log()
        assert_trees_equal(src, tmp_path / "data")
        assert healthcheck(env) == 0
        assert "max connections" not in server.log()
    finally:
        server.stop()
    assert healthcheck(env, timeout_s=2) == 1


def test_seed_sersync_form_runs_the_pusher_and_is_healthy(tmp_path, client):
    side = tmp_path / "server-side"
    side.mkdir()
    server, _ = seed_server(side)
    conf = seed_sersync_conf(tmp_path, port=server.port)
    src, target = tmp_path / "src", side / "data" / "files"
    (src / "first.txt").write_text("there before the start")
    env = process_env(SERSYNC_CONF_PATH=str(conf), BACKUPD_CONFIG_DIR=str(tmp_path / "etc-pusher"))
    with open(tmp_path / "pusher.log", "wb") as log:
        pusher = subprocess.Popen([str(WRAPPER)], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_until(lambda: (target / "first.txt").is_file(), "the full sync at start")
        (src / "later.txt").write_text("a change, pushed within the delay")
        wait_until(lambda: (target / "later.txt").is_file(), "the change to be pushed")
        assert_trees_equal(src, target, check_dir_mtimes=False)  # a realtime push sends the file, not its dir
        wait_until(lambda: healthcheck(env) == 0, "a healthy pusher", 15)
        assert (tmp_path / "sersync" / "state" / "pusher.heartbeat.json").is_file()  # $work_dir/state
        kill_group(pusher, grace_s=0)
        assert healthcheck(env) == 1  # killed: its heartbeat names a dead pid
    except AssertionError:
        print((tmp_path / "pusher.log").read_text(errors="replace"))
        raise
    finally:
        kill_group(pusher)
        server.stop()
