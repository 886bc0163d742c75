"""Point-in-time restore against a real server: `backupd restore --at T` gives exactly the
tree that was live at T (snapshotted by the test right after each push), for instants
before creation, at a push's boundary second, inside each interval and after deletion;
`history diff` agrees with the snapshots; `verify` finds a flipped byte and a deleted
history file and nothing on an intact module; a server SIGKILLed mid-push restarts
with catalog and tree in agreement."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import scan_tree
from tests.interop.conftest import HISTORY, T0, assert_ok, set_mtime

VERSIONS = ("3.5.0", "3.2.7")
GAP_S = 2.1   # between pushes: a boundary second and an inside second per interval


@pytest.fixture(params=VERSIONS, ids=[f"c{v}" for v in VERSIONS])
def client(request, rsync_clients):
    return rsync_clients[request.param]


def backupd(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backupd", *map(os.fspath, args)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def write(path: Path, text: str, mtime: int, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    set_mtime(path, mtime)


def step1(src: Path) -> None:
    write(src / "f1", "v1\n", T0 + 1)
    write(src / "proj" / "a", "a one\n", T0 + 1)
    write(src / "proj" / "sub" / "b", "b one\n", T0 + 1)
    write(src / "proj" / "old", "old one\n", T0 + 1, 0o600)
    os.symlink("a", src / "proj" / "link")


def step2(src: Path) -> None:
    write(src / "f1", "v2, longer\n", T0 + 2)
    write(src / "proj" / "a", "a two\n", T0 + 2, 0o640)
    (src / "proj" / "old").unlink()
    os.rename(src / "proj" / "sub" / "b", src / "proj" / "sub" / "c")     # a rename


def step3(src: Path) -> None:
    write(src / "f1", "v3, the longest\n", T0 + 3)
    shutil.rmtree(src / "proj" / "sub")                                   # a directory removed


def step4(src: Path) -> None:
    write(src / "proj" / "sub" / "b", "b four, re-created\n", T0 + 4)     # ... and re-created
    (src / "f1").unlink()


def live_tree(root: Path) -> dict:
    found = scan_tree(root, ignore=[HISTORY])
    found.pop(b".")
    return found


def stamp(second: int) -> str:
    return datetime.fromtimestamp(second).strftime("%Y-%m-%d %H:%M:%S")


def test_restore_at_t_gives_the_tree_live_at_t(client, make_targets, tmp_path):
    target = make_targets(("backupd",), params={"catalog dir": tmp_path / "catalogs"})["backupd"]
    conf, module, src = target.server.config_path, target.module, tmp_path / "src"
    src.mkdir()
    pushes = []   # (started, ended, the module's live tree right after)
    for n, step in enumerate((step1, step2, step3, step4)):
        if n:
            time.sleep(GAP_S)
        step(src)
        started = time.time()
        assert_ok(target.push(client, "-a", "--delete", f"{src}/"))
        pushes.append((started, time.time(), live_tree(module)))
    instants = [(math.floor(pushes[0][0]) - 1, {})]                       # before creation
    for k, (_started, ended, tree) in enumerate(pushes):
        nxt = math.floor(pushes[k + 1][0]) if k + 1 < len(pushes) else math.floor(ended) + 3
        instants.append((math.floor(ended), tree))                        # the push's own (boundary) second
        if math.floor(ended) + 1 < nxt:
            instants.append((math.floor(ended) + 1, tree))                # inside the interval
    assert len(instants) >= 6, instants
    for n, (second, want) in enumerate(instants):
        view = tmp_path / f"view{n}"                                      # a plain pull of the view mod@T
        iso = datetime.fromtimestamp(second).strftime("%Y-%m-%dT%H:%M:%S")
        assert_ok(client.run("-a", target.server.url(f"mod@{iso}"), f"{view}/"))
        got = scan_tree(view)
        got.pop(b".")
        assert got == want, f"pull of mod@{iso} (instant {n})"
        out = tmp_path / f"at{n}"
        done = backupd("restore", "mod", ".", "--at", stamp(second), "--to", out, "--config", conf)
        if not want:
            assert done.returncode == 1 and "nothing was live" in done.stderr, done.stderr
            continue
        assert done.returncode == 0, done.stderr
        got = scan_tree(out)
        got.pop(b".")
        assert got == want, f"restore --at {stamp(second)} (instant {n})"
        one = backupd("restore", "mod", "f1", "--at", stamp(second), "--to", tmp_path / f"f1-{n}", "--config", conf)
        if b"f1" in want:                                                 # a file: its version at T
            assert one.returncode == 0, one.stderr
            assert scan_tree(tmp_path / f"f1-{n}")[b"f1"] == want[b"f1"]
        else:                                                             # after deletion: nothing
            assert one.returncode == 1 and "nothing was live" in one.stderr

    refused = client.run("-a", f"{src}/", target.server.url(f"mod@{stamp(instants[1][0])[:10]}"))
    assert refused.returncode != 0 and "read-only snapshot view" in refused.stderr, refused.stderr

    first, second = pushes[0][2], pushes[1][2]
    diff = backupd("history", "diff", "mod", stamp(math.floor(pushes[0][1])), stamp(math.floor(pushes[1][1])),
                   "--json", "--config", conf)
    assert diff.returncode == 0, diff.stderr
    got = {(c["change"], c["path"]) for c in json.loads(diff.stdout)}
    want = {("added", os.fsdecode(p)) for p in second.keys() - first.keys()}
    want |= {("deleted", os.fsdecode(p)) for p in first.keys() - second.keys()}
    want |= {("changed", os.fsdecode(p)) for p in first.keys() & second.keys() if first[p] != second[p]}
    assert got == want

    listed = backupd("history", "ls", "mod", "--json", "--config", conf)
    assert listed.returncode == 0, listed.stderr
    f1 = [r for r in json.loads(listed.stdout) if r["path"] == "f1"]
    assert [r["size"] for r in f1] == [3, 11, 16] and all(r["live_to"] for r in f1)
    days = backupd("history", "days", "mod", "--json", "--config", conf)
    assert days.returncode == 0 and sum(d["new"] for d in json.loads(days.stdout).values()) >= 10


def test_verify_finds_bit_rot_and_a_deleted_version(make_targets, rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    target = make_targets(("backupd",), params={"catalog dir": tmp_path / "catalogs"})["backupd"]
    conf, src = target.server.config_path, tmp_path / "src"
    for n in range(3):
        write(src / "f1", f"version {n} " * (n + 100), T0 + n)
        write(src / "d" / "g", f"g {n}\n", T0 + n)
        assert_ok(target.push(client, "-a", f"{src}/"))
    intact = backupd("verify", "mod", "--config", conf)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "0 mismatches, 0 missing" in intact.stdout
    (rot,) = [p for p in target.history_files()[b"f1"] if p.stat().st_size > 1000][:1]
    blob = bytearray(rot.read_bytes())
    blob[len(blob) // 2] ^= 0x20
    rot.write_bytes(bytes(blob))
    target.history_files()[b"d/g"][0].unlink()
    found = backupd("verify", "mod", "--json", "--config", conf)
    assert found.returncode == 1
    (report,) = json.loads(found.stdout)
    assert sorted((f["kind"], f["path"]) for f in report["findings"]) == [("mismatch", "f1"), ("missing", "d/g")]


def _kill_during_push(client, target, src: Path, delay_s: float) -> int:
    argv = [*client.argv_prefix, "-a", "--delete", f"{src}/", target.url()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(delay_s)
    os.killpg(target.server.proc.pid, signal.SIGKILL)
    target.server.proc.wait(timeout=10)
    return proc.wait(timeout=60)


def test_sigkill_mid_push_then_restart_catalog_and_tree_agree(make_targets, backupd_server, rsync_clients,
                                                              tmp_path):
    client = rsync_clients["3.5.0"]
    target = make_targets(("backupd",), params={"catalog dir": tmp_path / "catalogs"})["backupd"]
    conf, module, src = target.server.config_path, target.module, tmp_path / "src"
    rng = random.Random(12)
    codes = []
    for i in range(400):
        write(src / f"d{i % 7}" / f"f{i}", f"round 0 file {i}\n", T0)
    assert_ok(target.push(client, "-a", f"{src}/"))
    for rnd in range(1, 5):                                   # bounded: 4 kills
        for i in range(400):
            if rng.random() < 0.1:
                (src / f"d{i % 7}" / f"f{i}").unlink(missing_ok=True)
            else:
                write(src / f"d{i % 7}" / f"f{i}", f"round {rnd} file {i} " * rng.randint(1, 30), T0 + rnd)
        codes.append(_kill_during_push(client, target, src, rng.uniform(0.05, 0.6)))
        target.server = backupd_server(conf, port=target.server.port)   # start: reconcile
        again = backupd("history", "reindex", "mod", "--config", conf)
        assert again.returncode == 0, again.stderr
        assert "repairs: none" in again.stdout, f"round {rnd}: after restart: {again.stdout} {again.stderr}"
        now = stamp(math.floor(time.time()) + 1)
        out = tmp_path / f"now{rnd}"
        done = backupd("restore", "mod", ".", "--at", now, "--to", out, "--config", conf)
        assert done.returncode == 0, done.stderr
        want = live_tree(module)   # temp files a kill left behind are live entries too
        got = scan_tree(out)
        got.pop(b".")
        assert {p: (e.kind, e.digest, e.mode, e.mtime_ns) for p, e in got.items() if e.kind != "dir"} == {
            p: (e.kind, e.digest, e.mode, e.mtime_ns) for p, e in want.items() if e.kind != "dir"}
    assert any(code != 0 for code in codes), f"no kill landed mid-push: client exits {codes}"
    checked = backupd("verify", "mod", "--config", conf)
    assert checked.returncode == 0, checked.stdout + checked.stderr
