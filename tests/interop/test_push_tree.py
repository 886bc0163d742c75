"""Real trees pushed by the stock clients: the standard library and a 200 MiB file.

What a user sees after each push: exit 0, the module equal to the source
(content, modes, mtimes; the history folder aside), and every replaced or
deleted file kept under ``history-backup/<today>/`` with its old content,
a second same-day version next to the first.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.helpers import assert_trees_equal, scan_tree
from tests.interop.conftest import (
    HISTORY,
    T0,
    assert_ok,
    copy_tree,
    digest,
    local_days,
    parse_stats,
    set_mtime,
    write_random,
)

# the full standard library for these client variants, json+email+asyncio for the others
FULL_TREE_CLIENTS = {"c3.5.0", "c3.2.7"}
MiB = 1 << 20


def change_stdlib(src: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Modify, delete, add and rename files and a directory in a stdlib copy.

    Only touches json/, email/ and asyncio/ (present in the full copy and the
    subset). Returns ``(replaced, deleted)``: module path -> old content of
    every file the next ``--delete`` push must move into history.
    """
    rng = random.Random(11)
    replaced: dict[str, bytes] = {}
    deleted: dict[str, bytes] = {}

    def modify(rel: str, new: bytes, mtime: int, mode: int | None = None) -> None:
        path = src / rel
        replaced[rel] = path.read_bytes()
        path.write_bytes(new)
        if mode is not None:
            os.chmod(path, mode)
        set_mtime(path, mtime)

    encoder = (src / "json/encoder.py").read_bytes()
    modify("json/encoder.py", encoder + b"\n# changed by the interop test\n", T0 + 100)
    utils = (src / "email/utils.py").read_bytes()
    modify("email/utils.py", b"#" * 16 + utils[16:], T0 + 200)  # same size, new mtime
    events = (src / "asyncio/events.py").read_bytes()
    modify("asyncio/events.py", events.replace(b"import", b"import ", 1), T0 + 300, 0o600)

    for rel in ("email/quoprimime.py", "asyncio/__main__.py"):
        deleted[rel] = (src / rel).read_bytes()
        (src / rel).unlink()
    deleted["json/tool.py"] = (src / "json/tool.py").read_bytes()
    os.rename(src / "json/tool.py", src / "json/tool_renamed.py")
    for path in sorted((src / "email/mime").rglob("*")):
        if path.is_file():
            deleted[str(path.relative_to(src))] = path.read_bytes()
    os.rename(src / "email/mime", src / "email/mime_moved")

    (src / "NEW.txt").write_text("a file added at the root\n")
    (src / "email/newpkg/deep").mkdir(parents=True)
    (src / "email/newpkg/deep/data.bin").write_bytes(rng.randbytes(100_000))
    os.chmod(src / "email/newpkg", 0o750)
    set_mtime(src / "email/newpkg", T0 + 400)
    return replaced, deleted


def test_stdlib_push_change_push_keeps_every_version(
    rsync_client, backupd_target, stdlib_trees, tmp_path
):
    full = rsync_client.id in FULL_TREE_CLIENTS
    src = copy_tree(stdlib_trees["full" if full else "subset"], tmp_path / "src")
    module, precision = backupd_target.module, rsync_client.mtime_precision_ns
    started = time.time()

    assert_ok(backupd_target.push(rsync_client, "-a", f"{src}/"))
    assert_trees_equal(src, module, mtime_precision_ns=precision)
    assert not (module / HISTORY).exists(), "a first push into an empty module replaced something"

    replaced, deleted = change_stdlib(src)
    assert_ok(backupd_target.push(rsync_client, "-a", "--delete", f"{src}/"))
    assert_trees_equal(src, module, mtime_precision_ns=precision)
    kept = backupd_target.history_contents()
    assert kept == {rel: [old] for rel, old in {**replaced, **deleted}.items()}
    assert set(backupd_target.day_dirs()) <= local_days(started)
    # a deleted directory moves as a whole: its files keep their modes and mtimes
    day = backupd_target.history / backupd_target.day_dirs()[-1]
    assert_trees_equal(
        stdlib_trees["full" if full else "subset"] / "email/mime",
        day / "email/mime",
        mtime_precision_ns=precision,
        check_dir_mtimes=False,
    )

    second = (src / "json/encoder.py").read_bytes()
    (src / "json/encoder.py").write_bytes(second + b"# and changed once more\n")
    set_mtime(src / "json/encoder.py", T0 + 500)
    assert_ok(backupd_target.push(rsync_client, "-a", "--delete", f"{src}/"))
    assert_trees_equal(src, module, mtime_precision_ns=precision)
    assert backupd_target.history_contents() == {
        **kept,
        "json/encoder.py": [replaced["json/encoder.py"], second],
    }
    assert set(backupd_target.day_dirs()) <= local_days(started)


@pytest.mark.parametrize(
    ("version", "protocol"), [("3.5.0", None), ("3.2.7", 31)], ids=["c3.5.0", "c3.2.7-p31"]
)
def test_200mib_file_delta_push_sends_only_the_changes(
    rsync_clients, backupd_target, tmp_path, version, protocol
):
    client = rsync_clients[version].with_protocol(protocol, f"c{version}")
    size = 200 * MiB
    src = tmp_path / "src"
    src.mkdir()
    big = write_random(src / "big.bin", size, seed=2)
    set_mtime(big, T0)
    old_digest = digest(big)
    module = backupd_target.module

    assert_ok(backupd_target.push(client, "-a", f"{src}/"))
    assert digest(module / "big.bin") == old_digest

    rng = random.Random(3)
    with open(big, "r+b") as f:
        for k in range(5):  # 5 x 4 KiB, spread over the file
            f.seek(k * 40 * MiB + 12_345)
            f.write(rng.randbytes(4096))
    set_mtime(big, T0 + 3600)
    started = time.time()
    done = assert_ok(backupd_target.push(client, "-a", "--stats", f"{src}/"))

    stats = parse_stats(done.stdout)
    assert stats["Literal data"] + stats["Matched data"] == size, done.stdout
    assert stats["Literal data"] < size // 100, done.stdout  # under 1 %: ~5 blocks
    assert stats["Total bytes sent"] < size // 50, done.stdout
    assert_trees_equal(src, module)
    old = [p for p in backupd_target.history_files()[b"big.bin"]]
    assert len(old) == 1 and digest(old[0]) == old_digest
    assert set(backupd_target.day_dirs()) <= local_days(started)
    assert os.stat(old[0]).st_mtime_ns == T0 * 10**9  # the old version keeps its mtime
    assert not set(scan_tree(module, ignore=[HISTORY])) - {b".", b"big.bin"}
