"""A full disk during a push: a clear per-file error, nothing lost, the daemon serves on.

The module lives on a small tmpfs (mounting needs root; skipped elsewhere).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import HISTORY, write_random

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_fails_the_file_and_keeps_every_version(backupd_server, rsync_clients, small_fs, tmp_path):
    client = rsync_clients["3.5.0"]
    module = small_fs / "mod"
    module.mkdir()
    server = backupd_server({"modules": {"mod": {"path": str(module), "read_only": False}}})
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "a.bin", MiB, seed=1)
    old = (src / "a.bin").read_bytes()
    first = client.run("-a", f"{src}/", server.url("mod"))
    assert first.returncode == 0, first.stderr

    write_random(src / "a.bin", MiB, seed=2)
    os.utime(src / "a.bin", (1_700_000_000, 1_700_000_000))
    write_random(src / "big.bin", 4 * MiB, seed=3)
    second = client.run("-a", f"{src}/", server.url("mod"))

    assert second.returncode == 23, second.stderr
    assert "No space left on device" in second.stderr
    assert (module / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    kept = list((module / HISTORY).rglob("a.bin*"))
    assert [p.read_bytes() == old for p in kept] == [True]
    assert not (module / "big.bin").exists()
    assert not [p for p in module.iterdir() if p.name.startswith(".big.bin.")], "temp file left behind"

    (src / "big.bin").unlink()
    (src / "c.txt").write_text("after the full disk\n")
    third = client.run("-a", f"{src}/", server.url("mod"))
    assert third.returncode == 0, third.stderr
    assert (module / "c.txt").read_text() == "after the full disk\n"
