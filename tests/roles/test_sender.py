"""The sender role end to end against a scripted client (no rsync): data, deltas, phases, errors."""

from __future__ import annotations

import os
import random
import stat

import pytest

from backupd.errors import ExitCode
from backupd.protocol.constants import IoError, ItemFlags, MsgCode, XmitFlags
from backupd.protocol.sums import Checksum
from tests.helpers import Dir, File, Symlink, make_tree
from tests.roles.sender_harness import PullClient

T0 = 1_600_000_000


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def module(tmp_path):
    root = tmp_path / "mod"
    make_tree(root, {
        "hello.txt": File("hello world\n", mode=0o644, mtime_ns=T0 * 10**9 + 123_456_789),
        "empty": File(b"", mode=0o600, mtime=T0 + 1),
        "big.bin": File(rand(300_000, 1), mode=0o755, mtime=T0 + 2),
        "link": Symlink("hello.txt"),
        "sub": Dir({"inner.txt": File("inner\n", mtime=T0 + 3), "deeper": Dir({}, mode=0o700)}, mtime=T0 + 4),
        "emptydir": Dir({}, mode=0o750, mtime=T0 + 5),
    })
    os.utime(root, ns=(T0 * 10**9, T0 * 10**9))
    return root


def test_pull_sends_every_file_with_its_attributes(module):
    result = PullClient(module, ["-rlpt"], [b"mod/"]).run()
    assert result.exit_code == ExitCode.OK
    assert result.names() == [b".", b"big.bin", b"empty", b"hello.txt", b"link", b"emptydir",
                              b"sub", b"sub/inner.txt", b"sub/deeper"]
    for entry in result.entries:
        st = os.lstat(module / os.fsdecode(entry.name))
        assert (entry.mode, entry.mtime_ns) == (st.st_mode, st.st_mtime_ns), entry.name
        if entry.is_reg:
            assert entry.size == st.st_size
            got = result.files[entry.name]
            assert got.sum_ok and got.data == (module / os.fsdecode(entry.name)).read_bytes()
    assert result.by_name(b"link").link_target == b"hello.txt"
    assert result.by_name(b".").xflags & XmitFlags.TOP_DIR
    assert not result.by_name(b"sub").xflags      # a content dir below the root: no flags
    assert result.trailing == b""                 # nothing after the reply to DONE #4
    total = sum(e.size for e in result.entries if e.is_reg or e.is_link)
    assert result.stats[2] == total


def test_delta_sends_matched_blocks_for_an_old_copy(module):
    new = (module / "big.bin").read_bytes()
    old = new[:100_000] + rand(700, 9) + new[100_700:250_000] + new[260_000:]
    result = PullClient(module, ["-rt"], [b"mod/big.bin"]).run(basis={b"big.bin": old})
    got = result.files[b"big.bin"]
    assert got.sum_ok and got.data == new
    assert got.matched > 0.9 * len(new) and got.literal < 20_000
    assert got.head.count > 0                     # the sum head is echoed before the tokens


@pytest.mark.parametrize("compression", [None, "zlib", "zlibx", "zstd", "lz4"])
@pytest.mark.parametrize("checksum", ["xxh128", "xxh3", "xxh64", "md5", "sha1"])
def test_every_compression_and_checksum_rebuilds_the_files(module, compression, checksum):
    new = (module / "big.bin").read_bytes()
    old = rand(5_000, 3) + new[5_000:]
    client = PullClient(module, ["-rt"], [b"mod/"], checksum=checksum, compression=compression)
    result = client.run(basis={b"big.bin": old, b"hello.txt": b"hello there\n"})
    assert result.exit_code == ExitCode.OK
    for name in (b"big.bin", b"hello.txt", b"empty", b"sub/inner.txt"):
        got = result.files[name]
        assert got.sum_ok and got.data == (module / os.fsdecode(name)).read_bytes()
    assert result.files[b"big.bin"].matched >= len(new) - 10_000


def test_redo_phase_resends_with_full_sums(module):
    old = (module / "big.bin").read_bytes()[:-1000]
    result = PullClient(module, ["-rt"], [b"mod/big.bin"]).run(basis={b"big.bin": old}, redo=[b"big.bin"])
    got = result.files[b"big.bin"]
    assert got.sum_ok and got.data == (module / "big.bin").read_bytes()
    assert got.head.s2_len == 16                  # the redo request's full-length sums, echoed


def test_non_transfer_headers_are_echoed_and_dry_run_sends_no_data(module):
    flags = ItemFlags.REPORT_TIME | ItemFlags.REPORT_PERMS
    result = PullClient(module, ["-rtn"], [b"mod/"]).run(echo=[(b"sub", flags)])
    ndx = result.names().index(b"sub")
    assert (ndx, flags) in result.echoes
    transfers = [(n, f) for n, f in result.echoes if f & ItemFlags.TRANSFER]
    assert len(transfers) == 4 and not result.files   # dry run: headers only


def test_delete_stats_are_echoed(module):
    result = PullClient(module, ["-rt", "--delete"], [b"mod/"]).run(want=lambda e: False, del_stats=(3, 1, 0, 0, 2))
    assert result.del_stats_echo == (3, 1, 0, 0, 2)
    assert result.exit_code == ExitCode.OK


def test_listing_without_requests_ends_with_three_dones_and_stats(module):
    result = PullClient(module, ["-d"], [b"mod/"]).run(want=lambda e: False)
    assert result.exit_code == ExitCode.OK and not result.files and not result.echoes
    assert len(result.stats) == 5 and result.stats[3] >= 1     # flist build time is at least 1 ms


def test_vanished_file_gets_no_send_and_exit_24(module):
    def remove(result):
        (module / "hello.txt").unlink()

    result = PullClient(module, ["-rt"], [b"mod/"]).run(before_requests=remove)
    ndx = result.names().index(b"hello.txt")
    assert result.no_send == [ndx] and b"hello.txt" not in result.files
    assert any("vanished" in t for t in result.texts(MsgCode.WARNING))
    assert [int.from_bytes(p, "little") for c, p in result.messages if c == MsgCode.IO_ERROR] == [IoError.VANISHED]
    assert result.exit_code == ExitCode.VANISHED
    assert result.files[b"big.bin"].sum_ok        # the others still arrive


def test_unopenable_file_gets_no_send_error_and_exit_23(module, tmp_path):
    def swap_parent(result):
        os.rename(module / "sub", tmp_path / "sub-away")
        os.symlink(tmp_path / "sub-away", module / "sub")   # a symlinked parent: refused

    result = PullClient(module, ["-rt"], [b"mod/"]).run(before_requests=swap_parent)
    assert result.no_send == [result.names().index(b"sub/inner.txt")]
    assert any("sub/inner.txt" in t for t in result.texts(MsgCode.ERROR_XFER))
    assert result.exit_code == ExitCode.PARTIAL


def test_missing_argument_ends_after_the_empty_list(module):
    result = PullClient(module, ["-rt"], [b"mod/nothing"]).run()
    assert result.entries == [] and result.trailing == b""
    assert any('link_stat "nothing" (in mod) failed' in t for t in result.texts(MsgCode.ERROR_XFER))
    assert result.io_error == 0                   # ENOENT does not block the client's deletions


def test_transfer_request_for_a_directory_is_a_protocol_error(module):
    result = PullClient(module, ["-rt"], [b"mod/"]).run(want=lambda e: e.name == b"sub")
    assert result.exit_code == ExitCode.PROTOCOL
    assert "non-regular" in str(result.error)


def test_checksum_option_sends_whole_file_sums_in_the_list(module):
    result = PullClient(module, ["-rtc"], [b"mod/"], checksum="md5").run(want=lambda e: False)
    summer = Checksum("md5", 0)
    for name in (b"hello.txt", b"empty", b"big.bin"):
        hasher = summer.file_sum_hasher()
        hasher.update((module / os.fsdecode(name)).read_bytes())
        assert result.by_name(name).checksum == hasher.digest()


@pytest.mark.parametrize("verify", [False, True])
def test_append_sends_only_the_new_tail(module, verify):
    new = (module / "big.bin").read_bytes()
    args = ["-rt", "--append"] + (["--append"] if verify else [])
    result = PullClient(module, args, [b"mod/big.bin"]).run(basis={b"big.bin": new[:200_000]})
    got = result.files[b"big.bin"]
    assert got.data == new and got.sum_ok and got.literal == 100_000


def test_id_lists_name_the_owners_unless_the_module_forces_numeric_ids(module):
    named = PullClient(module, ["-rtog"], [b"mod/"], numeric_ids=False).run(want=lambda e: False)
    assert named.users.get(0) == b"root" and named.groups.get(0) == b"root"
    assert {e.uid for e in named.entries} <= set(named.users)
    numeric = PullClient(module, ["-rtog", "--numeric-ids"], [b"mod/"]).run(want=lambda e: False)
    assert numeric.users == {} and numeric.groups == {}


def test_hard_links_are_listed_as_groups_led_by_their_first_entry(module):
    os.link(module / "hello.txt", module / "zz-hello.txt")
    os.link(module / "big.bin", module / "sub-link.bin")
    result = PullClient(module, ["-rtH"], [b"mod/"]).run(want=lambda e: False)
    assert result.exit_code == ExitCode.OK and not result.texts(MsgCode.WARNING)
    names = result.names()
    groups = {}
    for e in result.entries:
        if e.hlink_group is not None:
            groups.setdefault(e.hlink_group, []).append((e.name, e.hlink_first))
    assert sorted(groups.values()) == [
        [(b"big.bin", True), (b"sub-link.bin", False)],
        [(b"hello.txt", True), (b"zz-hello.txt", False)],
    ]
    assert all(names[ndx] == members[0][0] for ndx, members in groups.items())
    plain = PullClient(module, ["-rt"], [b"mod/"]).run(want=lambda e: False)
    assert all(e.hlink_group is None for e in plain.entries)


def test_remove_source_files_needs_a_writable_module(module):
    refused = PullClient(module, ["-rt", "--remove-source-files"], [b"mod/"]).run()
    assert refused.exit_code == ExitCode.SYNTAX and (module / "hello.txt").exists()
    client = PullClient(module, ["-rt", "--remove-source-files"], [b"mod/"], read_only=False)
    result = client.run(success=[b"hello.txt"])
    assert result.files[b"hello.txt"].sum_ok
    assert not (module / "hello.txt").exists()
    kept = list((module / "history-backup").rglob("hello.txt"))
    assert [p.read_bytes() for p in kept] == [b"hello world\n"]


def test_mode_of_listed_special_files(module):
    os.mkfifo(module / "fifo")
    result = PullClient(module, ["-rtD"], [b"mod/"]).run(want=lambda e: False)
    entry = result.by_name(b"fifo")
    assert stat.S_ISFIFO(entry.mode) and entry.size == 0


@pytest.mark.parametrize("protocol", [30, 31])
def test_end_phase_per_protocol(module, protocol):
    """Protocol 31 answers DONE #4 and reads #5; protocol 30 reads one goodbye DONE, answers nothing."""
    result = PullClient(module, ["-rt"], [b"mod/hello.txt"], protocol=protocol).run()
    assert result.exit_code == ExitCode.OK and result.files[b"hello.txt"].sum_ok
    assert result.trailing == b"" and result.error is None
    assert result.by_name(b"hello.txt").mtime_nsec == (123_456_789 if protocol >= 31 else 0)


@pytest.mark.parametrize(("verbose", "max_verbosity", "reported"), [("-vv", 2, True), ("-vv", 1, False),
                                                                     ("-v", 2, False), ("-vvv", 2, True)])
def test_vv_pull_ends_with_match_report_when_max_verbosity_allows(tmp_path, verbose, max_verbosity, reported):
    from tests.delta_data import REP_BASIS, REP_NEW, blob

    big = blob(1, 96 * 1024)
    make_tree(tmp_path / "mod", {"big.bin": File(big[:40000] + b"inserted in the middle\n" + big[40000:90000]),
                                 "rep.bin": File(REP_NEW), "new.txt": File(b"n" * 1000)})
    client = PullClient(tmp_path / "mod", ["-rt", verbose], [b"mod/"], max_verbosity=max_verbosity)
    result = client.run(basis={b"big.bin": big[:90000], b"rep.bin": REP_BASIS})
    assert result.exit_code == ExitCode.OK
    # stock rsyncd: 128+5 matches, 129+6 hash hits, 9 false alarms, 723+708+1000 literal bytes (sender.c
    # send_files calls match_report once, after the last file, as DEBUG DELTASUM 1)
    line = "total: matches=133  hash_hits=135  false_alarms=9 data=2431\n"
    assert result.texts(MsgCode.INFO) == ([line] if reported else [])
