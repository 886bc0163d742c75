"""`verify interval` in a running `backupd serve`: the daemon re-reads every stored version in
the background; a flipped byte in a history version shows in /metrics and the log, an intact
module reports zero, and pushes are served meanwhile."""

from __future__ import annotations

import time

import pytest

from tests.helpers import free_port, scrape_metrics
from tests.interop.conftest import T0, assert_ok, set_mtime

pytestmark = pytest.mark.interop


def run_of(got: dict, module: str) -> dict[str, float]:
    prefix = "backupd_verify_last_run_"
    return {name[len(prefix):]: value for (name, labels), value in got.items()
            if name.startswith(prefix) and labels == (("module", module),)}


def test_scheduled_verify_finds_a_flipped_history_byte(tmp_path, rsync_clients, backupd_server, monkeypatch):
    client = rsync_clients["3.5.0"]
    monkeypatch.setenv("BACKUPD_VERIFY_CHECK_S", "0.3")
    modules = {}
    for name in ("bad", "good"):
        (tmp_path / name).mkdir()
        modules[name] = {"path": tmp_path / name, "read_only": False, "verify_interval": "1s",
                         "catalog_dir": tmp_path / "catalogs"}
    mport = free_port()
    server = backupd_server({"global": {"reverse_lookup": False}, "modules": modules},
                            args=("--metrics-address", f"127.0.0.1:{mport}"))
    src = tmp_path / "src"
    src.mkdir()
    for n in range(2):                                                  # v1 goes to history
        (src / "f").write_text(f"version {n} " * 50)
        set_mtime(src / "f", T0 + n)
        for name in modules:
            assert_ok(client.run("-a", f"{src}/", server.url(name)))
    (stored,) = [p for p in (tmp_path / "bad" / "history-backup").rglob("*") if p.is_file()]
    blob = bytearray(stored.read_bytes())
    blob[7] ^= 0x04
    stored.write_bytes(bytes(blob))
    flipped = time.time()

    deadline = time.monotonic() + 30
    while True:                                                         # bounded: 30 s
        got = scrape_metrics(mport)
        bad, good = run_of(got, "bad"), run_of(got, "good")
        if (bad.get("mismatches") == 1 and good.get("timestamp_seconds", 0) > flipped + 0.5) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert bad["mismatches"] == 1 and bad["missing"] == 0 and bad["versions"] == 2, bad
    assert good["mismatches"] == 0 and good["missing"] == 0 and good["versions"] == 2, good
    assert good["bytes"] == 2 * len("version 0 " * 50)
    assert_ok(client.run("-a", f"{src}/", server.url("good")))         # sessions are served meanwhile
    log = server.log()
    assert "verify module bad: MISMATCH f (history-backup/" in log, log
    assert "verify module good: MISMATCH" not in log
