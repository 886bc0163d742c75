"""``backupd serve --metrics-address``: what the workers count reaches the scrape.

Sessions run in forked workers; the counters cross processes through
prometheus-client's multiprocess files (backupd/ops/metrics.py).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers import (
    client_350_or_skip,
    free_port,
    make_tree,
    scrape_metrics,
    write_secrets,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def client():
    return client_350_or_skip()


scrape = scrape_metrics


def wait_for_exporter(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            scrape(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sessions_refusals_auth_failures_and_cleanup(tmp_path, client, backupd_server, monkeypatch):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))  # where the server makes its multiprocess dir
    (tmp_path / "mod").mkdir()
    secrets = write_secrets(tmp_path / "secrets", {"alice": "right"})
    mport = free_port()
    config = {
        "global": {"reverse_lookup": False},
        "modules": {
            "mod": {
                "path": tmp_path / "mod",
                "read_only": False,
                "auth_users": ["alice"],
                "secrets_file": secrets,
            }
        },
    }
    server = backupd_server(config, args=("--metrics-address", f"127.0.0.1:{mport}"))
    wait_for_exporter(mport)  # it starts just after the rsync port listens
    (multiproc,) = private_tmp.iterdir()
    src = make_tree(tmp_path / "src", {"f": b"x" * 4096})

    ok = client.run("-a", f"{src}/", server.url("mod", "", user="alice"), password="right")
    assert ok.returncode == 0, ok.stderr
    bad = client.run("-a", f"{src}/", server.url("mod", "", user="alice"), password="wrong")
    assert bad.returncode == 5, bad.stderr
    unknown = client.run("-a", f"{src}/", server.url("nope", ""))
    assert unknown.returncode == 5
    listing = client.run(f"rsync://127.0.0.1:{server.port}/")
    assert listing.returncode == 0 and "mod" in listing.stdout

    deadline = time.monotonic() + 10
    while True:  # the last worker counts its session just after its client exits
        got = scrape(mport)
        ended = sum(v for (name, _), v in got.items() if name == "backupd_sessions_total")
        if ended == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got[("backupd_sessions_total", (("exit_code", "0"), ("module", "mod")))] == 1
    assert got[("backupd_sessions_total", (("exit_code", "5"), ("module", "mod")))] == 1
    assert got[("backupd_session_errors_total", (("exit_code", "5"), ("module", "mod")))] == 1
    assert (
        got[("backupd_sessions_total", (("exit_code", "5"), ("module", "-")))] == 1
    )  # unknown module
    assert (
        got[("backupd_sessions_total", (("exit_code", "0"), ("module", "-")))] == 1
    )  # the listing
    assert got[("backupd_auth_failures_total", (("module", "mod"),))] == 1
    assert got[("backupd_files_received_total", (("module", "mod"),))] == 1
    assert got[("backupd_file_bytes_received_total", (("module", "mod"),))] == 4096
    assert got[("backupd_sessions_started_total", ())] == 4
    assert ("process_resident_memory_bytes", ()) in got
    deadline = time.monotonic() + 10
    while len(files := os.listdir(multiproc)) > 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # a worker's files go once it has exited and been reaped
        scrape(mport)  # each scrape compacts first
    assert len(files) <= 3, files  # the archive and the listener's own two files
    assert {k: v for k, v in scrape(mport).items() if k[0].startswith("backupd_")} == {
        k: v for k, v in got.items() if k[0].startswith("backupd_")
    }  # folding moved counts, changed none

    server.stop()
    assert list(private_tmp.iterdir()) == []
