"""The traps of ``--files-from`` batches with the stock 3.5.0 client, against backupd and stock rsyncd.

1. ``--files-from`` turns off the recursion of ``-a``: a directory moved in
   arrives empty unless ``-r`` is given.
2. A deleted non-empty directory named in the list is skipped with exit 0
   ("cannot delete non-empty directory") unless ``--force`` is given.
3. A file changed again within the second of its last push, with the same
   size, is skipped by rsync's whole-second quick check unless the batch
   compares nanoseconds (``--modify-window=-1``).

Each test shows the trap with the naive argv (where the server shows it),
then that the batch the pusher plans gets it right.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from backupd.config.pusher_model import PusherConfig, SourceConfig, parse_target_url
from backupd.pusher.coalesce import Kind, PathEvent, coalesce, plan_batch
from backupd.pusher.targets import NS_QUICK_CHECK, batch_argv, write_list
from tests.helpers import SYSTEM_RSYNC, assert_trees_equal, make_tree


def run_batch(tmp_path: Path, src: Path, url: str, events, *, drop=(), **overrides) -> subprocess.CompletedProcess:
    """One planned batch run with the stock client; ``drop``: argv items left out (the naive form)."""
    batch = dataclasses.replace(plan_batch(coalesce(events)), **overrides)
    config = PusherConfig(sources=(), state_dir=tmp_path, rsync_binary=str(SYSTEM_RSYNC))
    argv = batch_argv(config, SourceConfig(src), parse_target_url(url), batch,
                      write_list(tmp_path / "files", batch.files))
    argv = [a for a in argv if a not in drop]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("kind", ["backupd", "rsyncd"])
def test_moved_in_dir_needs_r(kind, targets, tmp_path, rsync_clients):
    target = targets[kind]
    src = make_tree(tmp_path / "src", {"keep": "k"})
    make_tree(tmp_path / "outside", {"tree": {"a": "1", "deep": {"b": "2"}}})
    os.rename(tmp_path / "outside/tree", src / "tree")
    event = [PathEvent(b"tree", Kind.TREE, True)]

    naive = run_batch(tmp_path, src, target.url, event, recursive=False)
    assert naive.returncode == 0, naive.stderr
    assert os.listdir(target.module / "tree") == []  # trap 1: arrived empty

    ours = run_batch(tmp_path, src, target.url, event)
    assert ours.returncode == 0, ours.stderr
    # content, modes and file mtimes; stock rsyncd leaves these dir mtimes at "now" (a full sync fixes them)
    assert_trees_equal(src / "tree", target.module / "tree", check_dir_mtimes=False)


@pytest.mark.parametrize("kind", ["backupd", "rsyncd"])
def test_deleted_full_dir_needs_force(kind, targets, tmp_path, rsync_clients):
    target = targets[kind]
    make_tree(target.module, {"gone": {"x": "1", "sub": {"y": "2"}}, "stay": "s"})
    src = make_tree(tmp_path / "src", {"stay": "s"})
    event = [PathEvent(b"gone/sub/y", Kind.DELETE), PathEvent(b"gone", Kind.DELETE, True)]

    naive = run_batch(tmp_path, src, target.url, event, force=False)
    assert naive.returncode == 0, naive.stderr
    if kind == "rsyncd":  # trap 2 (backupd's server deletes the directory anyway)
        assert "cannot delete non-empty directory" in naive.stdout + naive.stderr
        assert (target.module / "gone/x").exists()

    ours = run_batch(tmp_path, src, target.url, event)
    assert ours.returncode == 0, ours.stderr
    assert not (target.module / "gone").exists()
    assert (target.module / "stay").exists()


@pytest.mark.parametrize("kind", ["backupd", "rsyncd"])
def test_same_second_same_size_change_needs_nanosecond_check(kind, targets, tmp_path, rsync_clients):
    target = targets[kind]
    src = make_tree(tmp_path / "src", {"f": "version 1"})
    second = 1_700_000_000
    os.utime(src / "f", ns=(second * 10**9 + 100, second * 10**9 + 100))
    event = [PathEvent(b"f", Kind.UPDATE)]
    assert run_batch(tmp_path, src, target.url, event).returncode == 0
    (src / "f").write_text("version 2")  # same size, same second, other nanoseconds
    os.utime(src / "f", ns=(second * 10**9 + 900, second * 10**9 + 900))

    naive = run_batch(tmp_path, src, target.url, event, drop=(NS_QUICK_CHECK,))
    assert naive.returncode == 0, naive.stderr
    assert (target.module / "f").read_text() == "version 1"  # trap 3: skipped by the quick check

    ours = run_batch(tmp_path, src, target.url, event)
    assert ours.returncode == 0, ours.stderr
    assert (target.module / "f").read_text() == "version 2"
    assert (target.module / "f").stat().st_mtime_ns == second * 10**9 + 900
