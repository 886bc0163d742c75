"""`backupd serve` restarts: after a clean stop the start-up reconcile is skipped; after a
session worker was SIGKILLed mid-push (the daemon itself stopping cleanly) or the daemon
was SIGKILLed, the next start walks the module in full, and catalog and tree agree."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.interop.conftest import T0, assert_ok, set_mtime, write_random

SKIPPED = "catalog left clean by the last shutdown: reconcile skipped"


def backupd(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backupd", *map(os.fspath, args)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def idle(server) -> None:
    """Wait (bounded) until no session worker is left: the group's SIGTERM would kill one mid-teardown."""
    deadline = time.monotonic() + 20
    while children(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def restart(target, backupd_server, *, kill: bool = False):
    idle(target.server)
    if kill:
        os.killpg(target.server.proc.pid, signal.SIGKILL)
        target.server.proc.wait(timeout=10)
    else:
        target.server.stop()
    target.server = backupd_server(target.server.config_path, port=target.server.port)
    return target.server


def test_clean_restart_skips_the_walk_and_a_killed_worker_or_daemon_does_not(make_targets, backupd_server,
                                                                          rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    target = make_targets(("backupd",), params={"catalog dir": tmp_path / "catalogs"})["backupd"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_text("v1\n")
    set_mtime(src / "small", T0)
    assert_ok(target.push(client, "-a", f"{src}/"))

    server = restart(target, backupd_server)                           # clean stop
    assert SKIPPED in server.log(), server.log()

    write_random(src / "big", 4 << 20, seed=5)                         # a slow push, its worker killed
    proc = subprocess.Popen([*client.argv_prefix, "-a", "--bwlimit=256", f"{src}/", target.url()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while not children(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)                                                    # the worker is receiving "big"
    (worker,) = children(server.proc.pid)
    os.kill(worker, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0
    server = restart(target, backupd_server)                           # the daemon stops cleanly
    log = server.log()                                                 # this start's log only
    assert SKIPPED not in log and "writer(s) did not finish" in log, log

    server = restart(target, backupd_server)                           # that walk cleared the mark
    assert SKIPPED in server.log(), server.log()

    (src / "small").write_text("v2\n")
    assert_ok(target.push(client, "-a", f"{src}/"))
    server = restart(target, backupd_server, kill=True)                # the daemon SIGKILLed
    log = server.log()
    assert SKIPPED not in log and "the daemon did not stop cleanly" in log, log
    again = backupd("history", "reindex", "mod", "--config", target.server.config_path)
    assert again.returncode == 0 and "repairs: none" in again.stdout, again.stdout + again.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a root server")
def test_sessions_as_the_module_user_leave_and_clear_their_marks(request, make_targets, backupd_server,
                                                                 rsync_clients, tmp_path):
    nobody = pwd.getpwnam("nobody")
    state = Path(tempfile.mkdtemp(prefix="backupd-catalogs-"))   # pytest's tmp dirs are closed to nobody
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    os.chmod(state, 0o755)
    target = make_targets(("backupd",), params={"catalog dir": state / "catalogs", "uid": "nobody",
                                                "gid": str(nobody.pw_gid)})["backupd"]
    os.chown(target.module, nobody.pw_uid, nobody.pw_gid)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    assert_ok(rsync_clients["3.5.0"].run("-a", f"{src}/", target.url()))
    idle(target.server)                                                # the worker closes its tree last
    marks = state / "catalogs" / "mod" / "writers"
    assert marks.stat().st_uid == nobody.pw_uid and list(marks.iterdir()) == []
    assert "catalog of module" not in target.server.log(), target.server.log()   # the writer did not fail
    server = restart(target, backupd_server)
    assert SKIPPED in server.log(), server.log()
