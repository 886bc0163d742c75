"""Concurrent pushes to the same paths lose no version and tear nothing.

32 stock clients push the same 20 paths at once, for several rounds, each
version with its own content. Afterwards every version whose push exited 0
is the live file or a version in history (lost = 0), and every live or
history file is exactly one version that some client sent (torn = 0).
Issue 15 item 1: before the fix, install() linked the old entry into
history by name and then renamed over it, so two sessions interleaving
left one version with no name at all.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.interop.conftest import show

CLIENTS = 32
ROUNDS = 3
PATHS = [f"d{n % 4}/f{n:02d}" for n in range(20)]
DEADLINE_S = 50  # the whole test stays under a minute


def _content(client: int, rnd: int, path: str) -> bytes:
    """A version: a header naming it, then seeded bytes (some shared: delta matches)."""
    seed = hashlib.blake2b(f"{client}/{rnd}/{path}".encode()).digest()
    body = hashlib.shake_256(seed).digest(1024 + (client * 37 + rnd * 11) % 3000)
    common = hashlib.shake_256(path.encode()).digest(4096)
    return f"{path} client={client} round={rnd}\n".encode() + common + body


def _write_src(root: Path, client: int, rnd: int) -> dict[bytes, str]:
    """This client's tree for this round; returns content -> label."""
    out = {}
    for path in PATHS:
        data = _content(client, rnd, path)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        out[data] = f"{path}@c{client}r{rnd}"
    return out


def _push(client_bin, url: str, src: Path) -> subprocess.CompletedProcess[str]:
    # -I: never skip by quick check, every file is sent every round; -W: the
    # basis changes under a delta transfer here (another session replaced it),
    # which is a verification retry, not what this test is about
    return client_bin.run("-rtIW", f"{src}/", url, timeout=DEADLINE_S)


def _module_files(module: Path) -> dict[str, list[bytes]]:
    """Every regular file under the module (history included): relative path -> content."""
    out = {}
    for dirpath, _dirs, files in os.walk(module):
        for name in files:
            full = Path(dirpath, name)
            out[str(full.relative_to(module))] = [full.read_bytes()]
    return out


def test_concurrent_pushes_lose_no_version(backupd_target, rsync_clients, tmp_path):
    target = backupd_target
    client_bin = rsync_clients["3.5.0"]
    started = time.monotonic()
    pushed_ok: dict[bytes, str] = {}  # versions whose push exited 0
    sent: dict[bytes, str] = {}  # every version any client tried
    failures = []
    with ThreadPoolExecutor(CLIENTS) as pool:
        for rnd in range(ROUNDS):
            trees = {}
            for c in range(CLIENTS):
                src = tmp_path / f"r{rnd}c{c}"
                trees[c] = (src, _write_src(src, c, rnd))
                sent.update(trees[c][1])
            runs = {c: pool.submit(_push, client_bin, target.url(), trees[c][0]) for c in trees}
            for c, fut in runs.items():
                done = fut.result()
                if done.returncode == 0:
                    pushed_ok.update(trees[c][1])
                else:
                    failures.append(show(done))
    elapsed = time.monotonic() - started

    found = {}
    for rel, (data,) in _module_files(target.module).items():
        if os.path.basename(rel).startswith("."):
            continue  # a temp file (none expected: no session was killed)
        found.setdefault(data, []).append(rel)
    lost = sorted(label for data, label in pushed_ok.items() if data not in found)
    torn = sorted(rels[0] for data, rels in found.items() if data not in sent)
    total = CLIENTS * ROUNDS * len(PATHS)
    print(f"versions pushed: {total}, exit 0: {len(pushed_ok)}, lost: {len(lost)}, "
          f"torn: {len(torn)}, failed pushes: {len(failures)}, {elapsed:.1f} s")
    assert not failures, failures[0]
    assert len(pushed_ok) == total
    assert lost == [], f"{len(lost)} of {total} versions lost, e.g. {lost[:5]}"
    assert torn == [], f"torn files: {torn[:5]}"
    # each path: exactly one live version, the rest in history
    for path in PATHS:
        assert (target.module / path).read_bytes() in pushed_ok
