"""Excludes, the durable queue, the source state machine, rsync argv and exit classes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backupd.config.pusher_model import PusherConfig, SourceConfig, Target
from backupd.errors import ConfigError
from backupd.pusher.coalesce import Batch, Change, Kind
from backupd.pusher.excludes import ExcludeRules, rsync_anchored
from backupd.pusher.queue import TargetQueue
from backupd.pusher.source_state import Loss, SourceState, on_full_sync_done, on_loss, on_start
from backupd.pusher.targets import ExitClass, RsyncResult, batch_argv, classify_exit, full_sync_argv
from tests.helpers import make_tree

# ---------------------------------------------------------------- excludes


@pytest.mark.parametrize(
    ("path", "is_dir", "excluded"),
    [
        (b"x.tmp", False, True),
        (b"deep/down/x.tmp", False, True),
        (b"x.tmpl", False, False),
        (b"cache/a", False, True),  # re:^cache/
        (b"sub/cache/a", False, False),
        (b"logs", True, True),  # logs/ : directories only
        (b"logs", False, False),
        (b"a/logs/f", False, True),  # under an excluded dir
        (b"build/out.o", False, True),  # build/*.o anchored
        (b"src/build/out.o", False, False),
    ],
)
def test_exclude_rules(path, is_dir, excluded):
    rules = ExcludeRules(["*.tmp", "re:^cache/", "logs/", "/build/*.o"])
    assert rules.excluded(path, is_dir) is excluded


def test_anchored_excludes_escape_wildcards(tmp_path):
    make_tree(tmp_path, {"keep": "1", "a*b.tmp": "2", "logs": {"x": "3"}, "d": {"c[1].tmp": "4", "k": "5"}})
    rules = ExcludeRules(["*.tmp", "logs/"])
    assert rules.anchored(os.fsencode(tmp_path)) == [b"/a\\*b.tmp", b"/d/c\\[1].tmp", b"/logs"]
    assert rsync_anchored(b"plain\\name") == b"/plain\\name"


# ---------------------------------------------------------------- queue


def test_queue_merges_acks_by_seq_and_survives_reopen(tmp_path):
    q = TargetQueue(tmp_path / "q.sqlite")
    q.add({b"a": Change(Kind.UPDATE), b"d": Change(Kind.DELETE, True, True)}, now_ns=100)
    changes, seqs = q.snapshot()
    q.add({b"a": Change(Kind.DELETE)}, now_ns=200)  # written again after the snapshot
    q.ack(changes, seqs)
    assert q.snapshot()[0] == {b"a": Change(Kind.DELETE)}
    assert q.oldest_ns() == 100  # the oldest unpushed change of that path
    q.request_full()
    q.close()
    q = TargetQueue(tmp_path / "q.sqlite")
    assert q.depth() == 1 and q.full_owed() == 1
    seq = q.last_seq()
    q.add({b"late": Change(Kind.UPDATE)}, now_ns=300)
    q.ack_through(seq)
    assert list(q.snapshot()[0]) == [b"late"]
    q.set(full_done=1)
    assert q.full_owed() == 0 and q.status().depth == 1


def test_queue_commit_survives_sigkill(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from backupd.pusher.queue import TargetQueue\n"
        "from backupd.pusher.coalesce import Change, Kind\n"
        f"q = TargetQueue({str(tmp_path / 'q.sqlite')!r})\n"
        "q.add({b'p%d' % i: Change(Kind.UPDATE) for i in range(1000)}, 1)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr
    assert TargetQueue(tmp_path / "q.sqlite").depth() == 1000


# ---------------------------------------------------------------- state machine


def test_source_state_machine():
    m = on_start(None, full_sync_at_start=True)
    assert m.state is SourceState.INITIAL_SYNC and m.owes_full_sync
    assert on_start(None, False).state is SourceState.REALTIME
    assert on_start(SourceState.RESCAN, False).state is SourceState.RESCAN  # owed across restarts
    assert on_start(SourceState.REALTIME, False, unclean=True).state is SourceState.RESCAN
    assert on_start(SourceState.REALTIME, False, unclean=False).state is SourceState.REALTIME
    assert on_start(SourceState.INITIAL_SYNC, False).state is SourceState.INITIAL_SYNC
    m = on_full_sync_done(m, m.generation)
    assert m.state is SourceState.REALTIME
    lost = on_loss(m, Loss.OVERFLOW)
    assert lost.state is SourceState.RESCAN and lost.generation == 1
    started = lost.generation
    again = on_loss(lost, Loss.WATCH_LOST)  # lost again while that full sync ran
    assert on_full_sync_done(again, started).state is SourceState.RESCAN
    assert on_full_sync_done(again, again.generation).state is SourceState.REALTIME


# ---------------------------------------------------------------- argv and exits


CONFIG = PusherConfig(sources=(), state_dir=Path("/s"), bwlimit="50M", rsync_timeout_s=30,
                      extra_args=("--partial",))
SOURCE = SourceConfig(Path("/data/src"), remote_subdir="alias")
TARGET = Target("h", "mod", "sub", 8730, "u", Path("/pw"))


def test_batch_argv_adds_r_and_force_only_when_needed():
    plain = Batch((b"f",), recursive=False, force=False, covered=(b"f",))
    argv = batch_argv(CONFIG, SOURCE, TARGET, plain, Path("/l"), Path("/x"))
    assert argv == ["rsync", "-a", "-R", "--files-from=/l", "--from0", "--delete-missing-args",
                    "--modify-window=-1", "--timeout=30", "--bwlimit=50M", "--password-file=/pw", "--stats",
                    "--partial", "/data/src/", "rsync://u@h:8730/mod/sub/alias/"]
    both = Batch((b"d", b"t"), recursive=True, force=True, covered=(b"d", b"t"))
    argv = batch_argv(CONFIG, SOURCE, TARGET, both, Path("/l"), Path("/x"))
    assert argv[7:11] == ["-r", "--delete", "--force", "--exclude-from=/x"]
    own = dataclasses.replace(CONFIG, extra_args=("-@1",))  # the user's own window wins
    assert "--modify-window=-1" not in batch_argv(own, SOURCE, TARGET, plain, Path("/l"))
    full = full_sync_argv(CONFIG, SOURCE, TARGET, Path("/x"))
    assert full[:6] == ["rsync", "-a", "--delete", "--force", "--from0", "--exclude-from=/x"]


@pytest.mark.parametrize(("code", "cls"), [(0, ExitClass.OK), (24, ExitClass.OK), (23, ExitClass.PARTIAL),
                                           (5, ExitClass.UNREACHABLE), (10, ExitClass.UNREACHABLE),
                                           (30, ExitClass.UNREACHABLE), (-9, ExitClass.UNREACHABLE),
                                           (1, ExitClass.FATAL), (127, ExitClass.FATAL)])
def test_exit_classes(code, cls):
    assert classify_exit(code) is cls


@pytest.mark.parametrize(("errors", "cls"), [
    (("@ERROR: auth failed on module mod",), ExitClass.FATAL),
    (("@ERROR: Unknown module 'mdo'",), ExitClass.FATAL),
    (("@ERROR: max connections (2) reached -- try again later",), ExitClass.UNREACHABLE),
    ((), ExitClass.UNREACHABLE),
])
def test_a_refused_login_or_module_is_not_a_network_problem(errors, cls):
    result = RsyncResult(code=5, seconds=0.1, bytes_sent=0, files_sent=0, log_tail="", errors=errors)
    assert result.exit_class is cls


def test_ssh_target_pushes_with_rsh_and_no_password_file(tmp_path):
    from backupd.config.pusher_model import parse_target_url

    target = parse_target_url("rsync://u@h:2222/mod/sub", Path("/pw"), transport="ssh", identity_file=Path("/k e"),
                              known_hosts=Path("/kh"))
    argv = full_sync_argv(CONFIG, SOURCE, target)
    assert argv[argv.index("-e") + 1] == "ssh -p 2222 -i '/k e' -o UserKnownHostsFile=/kh -o BatchMode=yes"
    assert argv[-1] == "u@h:mod/sub/alias/"
    assert not any(a.startswith("--password-file") for a in argv)
    assert parse_target_url("rsync://h/mod", transport="ssh").port == 22
    assert classify_exit(255) == ExitClass.UNREACHABLE  # ssh could not connect or log in
    with pytest.raises(ConfigError, match="transport"):
        parse_target_url("rsync://h/mod", transport="ftp")
