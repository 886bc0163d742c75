"""The container entrypoint run for real (no Docker): RUN_MODE=rsyncd on loopback.

The wrapper ``container/entrypoint.sh`` renders the config from the
environment and execs ``backupd serve``; the stock rsync client pushes to it;
the metrics endpoint is scraped over HTTP.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from backupd.ops.entrypoint import healthcheck
from tests.helpers import (
    ServerProcess,
    assert_trees_equal,
    client_350_or_skip,
    free_port,
    make_tree,
    scrape_metrics,
)

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "container" / "entrypoint.sh"
MODULE = "backup"


@pytest.fixture(scope="module")
def client():
    return client_350_or_skip()


scrape = scrape_metrics


def scrape_when(port: int, ready, timeout_s: float = 10.0) -> dict[tuple, float]:
    """Scrape until ``ready(samples)``: a worker counts its session just after the client exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = scrape(port)
        if ready(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def start(tmp_path: Path, env: dict, name: str) -> ServerProcess:
    full = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "BACKUPD_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    server = ServerProcess(
        argv=[str(WRAPPER)],
        port=int(env["RSYNCD_PORT"]),
        log_path=tmp_path / f"{name}.log",
        cwd=tmp_path,
        env=full,
    )
    return server.start(timeout_s=15)


def test_entrypoint_serves_a_stock_client_push_with_metrics_and_transfer_log(tmp_path, client):
    data, etc = tmp_path / "data", tmp_path / "etc"
    data.mkdir()
    mport = free_port()
    env = {
        "RUN_MODE": "rsyncd",
        "RUN_AS": "root",
        "BACKUPD_CONFIG_DIR": str(etc),
        "RSYNCD_PATH": str(data),
        "RSYNCD_MOD_NAME": MODULE,
        "RSYNCD_PORT": str(free_port()),
        "RSYNCD_ADDRESS": "127.0.0.1",
        "METRICS_ADDRESS": f"127.0.0.1:{mport}",
        "RSYNCD_TRANSFER_LOGGING": "yes",
        "KEEP_HISTORY_BACKUP_DAYS": "3",
    }
    server = start(tmp_path, env, "first")
    try:
        found = re.search(r"generated the password of user 'rsync': (\S+)", server.log())
        assert found, server.log()
        password = found.group(1)
        assert stat.S_IMODE((etc / "rsyncd.secrets").stat().st_mode) == 0o600
        src = make_tree(
            tmp_path / "src", {"a.txt": b"a" * 1000, "d": {"b.bin": os.urandom(70_000)}}
        )
        url = server.url(MODULE, "", user="rsync")

        first = client.run("-a", f"{src}/", url, password=password)
        assert first.returncode == 0, first.stderr
        assert_trees_equal(src, data)

        (src / "a.txt").write_bytes(b"A" * 500)
        os.utime(src / "a.txt", (1_600_000_000, 1_600_000_000))
        (src / "d" / "b.bin").unlink()
        second = client.run("-a", "--delete", f"{src}/", url, password=password)
        assert second.returncode == 0, second.stderr
        assert_trees_equal(src, data)
        kept = sorted(
            p.relative_to(data / "history-backup")
            for p in (data / "history-backup").rglob("*")
            if p.is_file()
        )
        assert [p.parts[1:] for p in kept] == [("a.txt",), ("d", "b.bin")]

        def both_counted(got):
            return (
                got.get(("backupd_sessions_total", (("exit_code", "0"), ("module", MODULE)))) == 2
            )

        got = scrape_when(mport, both_counted)
        m = (("module", MODULE),)
        assert both_counted(got), got
        assert got[("backupd_files_received_total", m)] == 3  # a.txt, d/b.bin, then the new a.txt
        assert got[("backupd_file_bytes_received_total", m)] == 1000 + 70_000 + 500
        assert got[("backupd_received_bytes_total", m)] > 70_000  # the wire carried the data
        assert got[("backupd_sent_bytes_total", m)] > 0
        assert got[("backupd_files_deleted_total", m)] == 1
        assert got[("backupd_history_bytes", m)] == 1000 + 70_000
        assert got[("backupd_history_files", m)] == 2
        assert got[("backupd_sessions_active", ())] == 0

        log = server.log()
        assert f"recv UNDETERMINED [127.0.0.1] {MODULE} (rsync) a.txt 1000" in log
        assert f"recv UNDETERMINED [127.0.0.1] {MODULE} (rsync) d/b.bin 70000" in log
        assert f"recv UNDETERMINED [127.0.0.1] {MODULE} (rsync) a.txt 500" in log
        assert f"del. UNDETERMINED [127.0.0.1] {MODULE} (rsync) d/b.bin 0" in log
        assert healthcheck({"RUN_MODE": "rsyncd", "RSYNCD_PORT": env["RSYNCD_PORT"]}) == 0
    finally:
        server.stop()

    # a restart keeps the generated password and does not print it again
    again = start(tmp_path, {**env, "METRICS_ADDRESS": ""}, "second")
    try:
        assert "password" not in again.log()
        (src / "c.txt").write_text("new")
        third = client.run("-a", f"{src}/", again.url(MODULE, "", user="rsync"), password=password)
        assert third.returncode == 0, third.stderr
        assert (data / "c.txt").read_text() == "new"
    finally:
        again.stop()
