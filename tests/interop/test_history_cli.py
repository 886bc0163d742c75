"""History from the user's side: a deleted file comes back by `backupd restore` and by a
plain rsync pull of a day folder; `backupd prune` removes exactly the old day folders."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.helpers import assert_trees_equal, scan_tree
from tests.interop.conftest import HISTORY, T0, assert_ok, local_days, set_mtime, show

VERSIONS = ("3.5.0", "3.2.7")


@pytest.fixture(params=VERSIONS, ids=[f"c{v}" for v in VERSIONS])
def client(request, rsync_clients):
    return rsync_clients[request.param]


def backupd(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``python -m backupd ARGS`` (no terminal: no progress bar)."""
    return subprocess.run([sys.executable, "-m", "backupd", *map(os.fspath, args)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


def test_deleted_file_comes_back_by_restore_and_by_pull(client, backupd_target, tmp_path):
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "report.txt").write_text("the first report\n")
    os.chmod(src / "docs" / "report.txt", 0o640)
    (src / "keep.txt").write_text("stays\n")
    for path in (src / "docs" / "report.txt", src / "keep.txt", src / "docs", src):
        set_mtime(path, T0)
    started = time.time()
    assert_ok(backupd_target.push(client, "-a", f"{src}/"))
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time()))  # the report is live at this second
    time.sleep(1.1)
    (src / "docs" / "report.txt").unlink()
    set_mtime(src / "docs", T0 + 10)
    assert_ok(backupd_target.push(client, "-a", "--delete", f"{src}/"))
    assert not (backupd_target.module / "docs" / "report.txt").exists()
    (day,) = backupd_target.day_dirs()
    assert day in local_days(started)
    conf = backupd_target.server.config_path

    listed = backupd("history", "ls", "mod", "docs/report.txt", "--config", conf)
    assert listed.returncode == 0, listed.stderr
    assert f"{day} " in listed.stdout and f"{HISTORY}/{day}/docs/report.txt" in listed.stdout
    assert "current" not in listed.stdout

    out = tmp_path / "restored"
    gone = backupd("restore", "mod", "docs/report.txt", "--at", day, "--to", out, "--config", conf)
    assert gone.returncode == 1 and "nothing was live" in gone.stderr, gone.stderr  # deleted by the day's end
    dry = backupd("restore", "mod", "docs/report.txt", "--at", at, "--to", out, "--dry-run", "--config", conf)
    assert dry.returncode == 0, dry.stderr
    assert f"-> {out / 'report.txt'}" in dry.stdout and "nothing written" in dry.stdout
    assert not out.exists(), "restore --dry-run created its target directory"
    done = backupd("restore", "mod", "docs/report.txt", "--at", at, "--to", out, "--config", conf)
    assert done.returncode == 0, done.stderr
    assert (out / "report.txt").read_text() == "the first report\n"
    assert os.stat(out / "report.txt").st_mtime_ns == T0 * 10**9
    again = backupd("restore", "mod", "docs/report.txt", "--at", at, "--to", out, "--config", conf)
    assert again.returncode == 1 and "--force" in again.stderr
    (out / "report.txt").write_text("changed locally\n")
    forced = backupd("restore", "mod", "docs/report.txt", "--at", at, "--to", out, "--force", "--config", conf)
    assert forced.returncode == 0 and (out / "report.txt").read_text() == "the first report\n"
    # --force onto live data of the module is a versioned change: the replaced version goes to history
    live = backupd_target.module / "keep.txt"
    (backupd_target.module / "report.txt").write_text("live, newer\n")
    into = backupd("restore", "mod", "docs/report.txt", "--at", at, "--to", backupd_target.module, "--force",
                   "--config", conf)
    assert into.returncode == 0, into.stderr
    assert (backupd_target.module / "report.txt").read_text() == "the first report\n"
    assert b"live, newer\n" in backupd_target.versions("report.txt")
    assert live.read_text() == "stays\n"

    pulled = tmp_path / "pulled"
    assert_ok(client.run("-a", backupd_target.url(f"{HISTORY}/{day}/"), f"{pulled}/"))
    assert (pulled / "docs" / "report.txt").read_text() == "the first report\n"
    assert os.stat(pulled / "docs" / "report.txt").st_mtime_ns == T0 * 10**9
    assert os.stat(pulled / "docs" / "report.txt").st_mode & 0o777 == 0o640


def test_history_cannot_be_written_by_a_pull_option(client, backupd_target, tmp_path):
    (backupd_target.module / "f.txt").write_text("v1\n")
    hist = backupd_target.module / HISTORY / days_ago(1)
    hist.mkdir(parents=True)
    (hist / "f.txt").write_text("old\n")
    dest = tmp_path / "dest"
    done = client.run("-a", "--remove-source-files", backupd_target.url(f"{HISTORY}/{days_ago(1)}/"), f"{dest}/")
    assert (dest / "f.txt").read_text() == "old\n"
    assert (hist / "f.txt").read_text() == "old\n", show(done)     # history is never deleted


def days_ago(n: int) -> str:
    return (date.today() - timedelta(days=n)).isoformat()


@pytest.fixture
def aged_module(tmp_path):
    """A module with day folders 0..40 days old, and date-like names outside history."""
    module = tmp_path / "mod"
    for n in (0, 3, 6, 7, 8, 20, 40):
        (module / HISTORY / days_ago(n) / "d").mkdir(parents=True)
        (module / HISTORY / days_ago(n) / "d" / "f").write_bytes(b"x" * 1000)
    (module / HISTORY / "README").write_text("not a day folder")
    (module / days_ago(40)).mkdir()
    (module / days_ago(40) / "data").write_text("current data in a folder named like a date\n")
    (module / "logs").mkdir()
    (module / "logs" / days_ago(20)).write_text("a file named like a date\n")
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(f"[mod]\n    path = {module}\n    history keep days = 3\n")
    return module, conf


def test_prune_removes_exactly_the_old_day_folders(aged_module):
    module, conf = aged_module
    before = scan_tree(module, ignore=[HISTORY])
    dry = backupd("prune", "--config", conf, "--days", "7", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 3 day folders, 3 files, 3,000 bytes" in dry.stdout and "nothing removed" in dry.stdout
    assert len(os.listdir(module / HISTORY)) == 8
    done = backupd("prune", "--config", conf, "--days", "7", "--module", "mod")
    assert done.returncode == 0, done.stderr
    assert "removed 3 day folders, 3 files, 3,000 bytes" in done.stdout
    assert sorted(os.listdir(module / HISTORY)) == sorted(["README"] + [days_ago(n) for n in (0, 3, 6, 7)])
    assert scan_tree(module, ignore=[HISTORY]) == before
    own = backupd("prune", "--config", conf)                     # the module's own 3 days
    assert own.returncode == 0 and "removed 2 day folders" in own.stdout
    assert sorted(os.listdir(module / HISTORY)) == sorted(["README", days_ago(0), days_ago(3)])
    assert scan_tree(module, ignore=[HISTORY]) == before


def test_the_daemon_prunes_by_itself(backupd_server, aged_module, monkeypatch):
    module, conf = aged_module
    before = scan_tree(module, ignore=[HISTORY])
    monkeypatch.setenv("BACKUPD_PRUNE_CHECK_S", "0.5")      # the first pass half a second after the start
    backupd_server(conf)
    deadline = time.monotonic() + 15
    while len(os.listdir(module / HISTORY)) > 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(os.listdir(module / HISTORY)) == sorted(["README", days_ago(0), days_ago(3)])
    assert scan_tree(module, ignore=[HISTORY]) == before


def test_whole_history_pull_equals_the_history_folder(client, backupd_target, tmp_path):
    module = backupd_target.module
    for n, day in enumerate((days_ago(2), days_ago(1))):
        (module / HISTORY / day / "a").mkdir(parents=True)
        (module / HISTORY / day / "a" / "f.txt").write_text(f"version {n}\n")
        set_mtime(module / HISTORY / day / "a" / "f.txt", T0 + n)
        set_mtime(module / HISTORY / day / "a", T0)
        set_mtime(module / HISTORY / day, T0)
    set_mtime(module / HISTORY, T0)
    dest = tmp_path / "all"
    assert_ok(client.run("-a", backupd_target.url(f"{HISTORY}/"), f"{dest}/"))
    assert_trees_equal(module / HISTORY, dest, ignore=())
