"""A server killed while it overwrites a large file loses nothing.

The module's file must afterwards be exactly the old or exactly the new
version, never a torn mix; when it is the new one, the old one is in
history. A leftover temp file ``.big.bin.XXXXXX`` is allowed (and noted).
The restarted server takes the next push.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import assert_trees_equal
from tests.interop.conftest import (
    HISTORY,
    T0,
    assert_ok,
    digest,
    set_mtime,
    write_random,
)

MiB = 1 << 20
SIZE = 150 * MiB
# seconds between the temp file showing up and the SIGKILL; at --bwlimit=100m
# the transfer takes ~1.5 s, so the last attempt lands after the rename
DELAYS = (0.0, 0.3, 0.8, 4.0)


def _temp_files(module: Path) -> list[str]:
    return sorted(n for n in os.listdir(module) if n.startswith(".big.bin."))


def _group_alive(pgid: int) -> list[int]:
    """PIDs still in process group ``pgid`` (zombies aside)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def _push_and_kill(client, target, src: Path, delay: float) -> tuple[int, bool]:
    """Start a push, SIGKILL the server's process group ``delay`` s after a new temp
    file appears; returns (client exit code, whether that temp file was seen)."""
    argv = [*client.argv_prefix, "-a", "--bwlimit=100m", f"{src}/", target.url()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
    earlier = set(_temp_files(target.module))  # left by an earlier kill
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    seen = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if set(_temp_files(target.module)) - earlier:
            seen = True
            break
        time.sleep(0.005)
    time.sleep(delay)
    pgid = target.server.proc.pid
    os.killpg(pgid, signal.SIGKILL)
    target.server.proc.wait(timeout=10)
    for _ in range(100):  # the group's processes are gone before we look at the file
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    assert not _group_alive(pgid), "a server process survived SIGKILL of its group"
    proc.communicate(timeout=60)
    return proc.returncode, seen


@pytest.mark.slow
def test_sigkill_while_overwriting_leaves_old_or_new(
    backupd_target, backupd_server, rsync_clients, tmp_path, record_property
):
    client = rsync_clients["3.5.0"]
    target, module = backupd_target, backupd_target.module
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "big.bin", SIZE, seed=100)
    set_mtime(src / "big.bin", T0)
    assert_ok(target.push(client, "-a", f"{src}/"))
    committed = [digest(module / "big.bin")]  # every version the module ever held
    outcomes = []

    for attempt, delay in enumerate(DELAYS):
        old = digest(module / "big.bin")
        write_random(src / "big.bin", SIZE, seed=101 + attempt)
        set_mtime(src / "big.bin", T0 + 1 + attempt)
        new = digest(src / "big.bin")

        code, seen = _push_and_kill(client, target, src, delay)
        now = digest(module / "big.bin")
        kept = [digest(p) for p in target.history_files().get(b"big.bin", [])]
        temps = _temp_files(module)
        outcomes.append((delay, code, seen, "new" if now == new else "old", temps))
        assert now in (old, new), f"torn file after SIGKILL at +{delay} s (client exit {code})"
        if now == new:
            assert old in kept, f"new version in place but the old one is not in history ({delay})"
            committed.append(new)
        assert set(os.listdir(module)) <= {"big.bin", HISTORY, *temps}

        config, port = target.server.config_path, target.server.port
        target.server = backupd_server(config, port=port)

    record_property("crash_outcomes", repr(outcomes))
    print("SIGKILL outcomes (delay, client exit, temp seen, module holds, temp files):")
    for outcome in outcomes:
        print("   ", outcome)
    assert any(o[3] == "old" and o[2] for o in outcomes), f"no kill landed mid-write: {outcomes}"

    write_random(src / "big.bin", SIZE, seed=200)
    set_mtime(src / "big.bin", T0 + 100)
    assert_ok(target.push(client, "-a", f"{src}/"))
    assert_trees_equal(src, module, ignore=[HISTORY, *_temp_files(module)])
    kept = {digest(p) for p in target.history_files()[b"big.bin"]}
    assert set(committed) <= kept, "a version the module held was lost"
