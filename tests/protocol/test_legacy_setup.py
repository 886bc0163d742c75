"""Below protocol 30 nothing is negotiated: what the options become, and what is refused."""

from __future__ import annotations

import pytest

from backupd.protocol.constants import CompatFlags
from backupd.protocol.negotiate import file_list_options, legacy_refusal, legacy_setup
from backupd.protocol.server_args import parse_server_args
from backupd.roles.deletion import legacy_delete_line


def _opts(*args: str):
    return parse_server_args([b"--server", *(a.encode() for a in args), b".", b"mod/"])


@pytest.mark.parametrize("protocol", [27, 28, 29])
def test_algorithms_are_implied(protocol):
    n = legacy_setup(_opts("-logDtprcz"), seed=12345)
    assert (n.compat_flags, n.checksum, n.file_checksum, n.compression, n.seed) == (
        CompatFlags(0), "md4_old", "md4", "zlib", 12345)
    fopts = file_list_options(_opts("-logDtprc"), n, protocol)
    assert fopts.csum_len == 16 and not fopts.inc_recurse and not fopts.id0_names


@pytest.mark.parametrize(("args", "mode"), [
    (("-r", "--delete"), "before"),           # compat.c: a plain --delete deletes before, below 30
    (("-r", "--delete-during"), "during"),
    (("-r", "--delete", "--delete-after"), "after"),
    (("-r", "--delete-excluded"), "before"),
])
def test_a_plain_delete_means_delete_before(args, mode):
    opts = _opts(*args)
    legacy_setup(opts, 1)
    assert opts.delete_mode == mode


def test_append_becomes_append_verify():
    opts = _opts("-r", "--append")
    legacy_setup(opts, 1)
    assert opts.append == 2


@pytest.mark.parametrize(("args", "protocol", "message"), [
    (("-rA",), 29, "--acls requires protocol 30 or higher (negotiated 29)."),
    (("-rX",), 27, "--xattrs requires protocol 30 or higher (negotiated 27)."),
    (("-ry",), 28, "--fuzzy requires protocol 29 or higher (negotiated 28)."),
    (("-r", "--link-dest=a", "--inplace"), 27, "--link-dest with --inplace requires protocol 29 or higher"
     " (negotiated 27)."),
    (("-r", "--copy-dest=a", "--copy-dest=b"), 28, "Using more than one --copy-dest option requires protocol 29"
     " or higher (negotiated 28)."),
    (("-rm",), 28, "--prune-empty-dirs requires protocol 29 or higher (negotiated 28)."),
    (("-rym",), 29, None),
    (("-rA",), 30, None),
])
def test_refusals_use_rsyncs_words(args, protocol, message):
    assert legacy_refusal(_opts(*args), protocol) == message


@pytest.mark.parametrize(("fmt", "verbose", "is_dir", "line"), [
    ("%i", 0, False, b"*deleting  \n"),          # what a 28 server sends a -i client (the name is not in it)
    ("%i%I", 0, True, b"*deleting  %I\n"),
    ("%o", 0, False, b"del.\n"),                  # the client's --out-format had %o: the server expands only that
    (None, 1, True, b"deleting sub/x/\n"),
    ("X", 0, False, b"deleting sub/x\n"),
    (None, 0, False, None),
])
def test_legacy_delete_lines(fmt, verbose, is_dir, line):
    assert legacy_delete_line(fmt, verbose, b"sub/x", is_dir) == line
