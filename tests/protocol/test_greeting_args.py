"""Handshake lines, auth responses, server arguments and negotiation."""

from __future__ import annotations

import pytest

from backupd.errors import DaemonRefusal, ExitCode, ProtocolError, Unsupported
from backupd.protocol import greeting as gr
from backupd.protocol.constants import CompatFlags
from backupd.protocol.digests import have_md4
from backupd.protocol.negotiate import choose_name, finish_setup, plan_setup
from backupd.protocol.server_args import parse_server_args, parse_server_args_lenient, unbackslash

from .captures import client_side

RESPONSES = [  # password s3cret, challenge lHc1XiSEpfokqW9OmG4wbw (rsync-protocol-a.md §3.5)
    ("md5", "iwImVm9RPQ+ww9zEt4zbSg"),
    ("sha1", "HoNAyIlocyHBr7jQcaIBeRjzCiM"),
    ("sha256", "zcz/IO9v+F4efLkfsF9Q7qz5UCHEZAbrgi6JmxmW/rU"),
    ("sha512", "SMwoGn2OTLKE2/IVnZDv2q7WmSvVvkovLjPlYXnwTkjiFWMm/5r+IGUkFnjhsVUOWzZ18U4AvPXhiixhuE2XPA"),
    pytest.param("md4", "H1ccXsDQZlMOej0pocrV+w", marks=pytest.mark.skipif(not have_md4(), reason="no md4")),
]


@pytest.mark.parametrize(("digest", "response"), RESPONSES)
def test_auth_response_vectors(digest, response):
    assert gr.auth_response(digest, b"s3cret", "lHc1XiSEpfokqW9OmG4wbw") == response
    assert gr.check_response(digest, b"s3cret", "lHc1XiSEpfokqW9OmG4wbw", response)
    assert not gr.check_response(digest, b"s3creT", "lHc1XiSEpfokqW9OmG4wbw", response)


def test_captured_sha512_login_verifies():
    s2c = (client_side.__globals__["CAPTURES"] / "daemon-auth-sha512-push_c3.2.7.s2c").read_bytes()
    challenge = s2c.split(b"AUTHREQD ", 1)[1].split(b"\n", 1)[0].decode()
    side = client_side("daemon-auth-sha512-push_c3.2.7")
    user, response = gr.parse_auth_line(side.lines[2])
    assert user == "alice"
    peer = gr.decode_greeting(side.lines[0])
    assert gr.choose_auth_digest(peer) == "sha512"
    assert gr.check_response("sha512", b"s3cret", challenge, response)


def test_greeting_negotiation():
    peer = gr.decode_greeting(b"@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4")
    assert peer == gr.Greeting(32, 0, ("sha512", "sha256", "sha1", "md5", "md4"))
    assert gr.negotiate_protocol(peer) == 32
    assert gr.negotiate_protocol(gr.decode_greeting(b"@RSYNCD: 31.0")) == 31
    assert gr.choose_auth_digest(gr.decode_greeting(b"@RSYNCD: 31.0")) == "md5"
    assert gr.choose_auth_digest(gr.decode_greeting(b"@RSYNCD: 32.0 md5 sha1")) == "md5"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"@RSYNCD: 26.0", "too old"),
        (b"@RSYNCD: 31", "omitted the subprotocol"),
        (b"@RSYNCD: 32.0", "omitted the digest name list"),
        (b"GET / HTTP/1.0", "protocol startup error"),
    ],
)
def test_bad_greetings_are_refused_with_rsyncds_words(line, message):
    with pytest.raises(DaemonRefusal, match=message):
        gr.negotiate_protocol(gr.decode_greeting(line))


def test_listing_format_matches_rsyncd():
    assert gr.encode_listing([("mod", "test module")]) == b"mod            \ttest module\n@RSYNCD: EXIT\n"


ARGS = [  # (argv, checks) from rsync-protocol-a.md §4.1
    ([b"--server", b"-vlogDtpre.iLsfxCIvu", b".", b"mod/"],
     dict(recursive=True, links=True, owner=True, group=True, devices=True, times=True, perms=True,
          capabilities=".iLsfxCIvu", paths=[b"mod/"])),
    ([b"--server", b"-vlogDtprze.iLsfxCIvu", b"--checksum-choice=md5", b"--old-compress", b".", b"mod/"],
     dict(compress=True, checksum_choice="md5", compress_choice="zlib")),
    ([b"--server", b"-vlogDtpre.iLsfxCIvu", b"--compress-level=1", b".", b"mod/"],
     dict(compress_level=1, compression_on=True)),
    ([b"--server", b"-vlogDtpre.iLsfxCIvu", b"--delete-after", b"--max-delete=-1", b"--backup-dir", b"bk\\ dir",
      b".", b"mod/-x"],
     dict(delete_mode="after", max_delete=0, backup_dir=b"bk dir", paths=[b"mod/-x"])),
    ([b"--server", b"-re.iLsfxCIvu", b"--append", b"--append", b"--partial", b"--inplace", b".", b"mod/"],
     dict(append=2, partial=True, inplace=True)),
    # what the 3.5.0 client sends for --link-dest=../s1 --link-dest='/a b' (captured with -e)
    ([b"--server", b"-logDtpre.iLsfxCIvu", b"--link-dest", b"../s1", b"--link-dest", b"/a\\ b", b".",
      b"mod/s2/"], dict(alt_dest_type="link", alt_dest_dirs=[b"../s1", b"/a b"], paths=[b"mod/s2/"])),
    ([b"--server", b"-logDtpre.iLsfxCIvu", b"--copy-dest", b"../s1", b".", b"mod/s2/"],
     dict(alt_dest_type="copy", alt_dest_dirs=[b"../s1"])),
    ([b"--server", b"-re.iLsfxCIvu", b"--compare-dest=x", b".", b"mod/"],
     dict(alt_dest_type="compare", alt_dest_dirs=[b"x"])),
    ([b"--server", b"-re.iLsfxCIvu", *[b"--link-dest=d%d" % i for i in range(20)], b".", b"mod/"],
     dict(alt_dest_dirs=[b"d%d" % i for i in range(20)])),
]


@pytest.mark.parametrize(("argv", "checks"), ARGS)
def test_server_args(argv, checks):
    opts = parse_server_args(argv)
    for name, value in checks.items():
        assert getattr(opts, name) == value, name


# The messages and codes are stock rsyncd 3.5.0's for the same arguments (sent with rsync -M...):
# every option parse_arguments() rejects ends RERR_UNSUPPORTED, words from popt or options.c.
@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        ([b"--server", b"-vlogDtprUe.iLsfxCIvu", b".", b"mod/"], Unsupported,
         "rsync: on remote machine: -vlogDtprUe.iLsfxCIvu: unknown option"),
        ([b"--server", b"-vlogDtpre.iLsfxCIvu", b"--super", b".", b"mod/"], Unsupported,
         "rsync: on remote machine: --super: unknown option"),
        ([b"--server", b"-re.iLsfxCIvu", b"--bogus-option", b".", b"mod/"], Unsupported,
         "rsync: on remote machine: --bogus-option: unknown option"),
        ([b"--server", b"-re.iLsfxCIvu", b"--zzz=3", b".", b"mod/"], Unsupported,
         "rsync: on remote machine: --zzz=3: unknown option"),
        ([b"--server", b"-re.iLsfxCIvu", b"--timeout=abc", b".", b"mod/"], Unsupported,
         "rsync: on remote machine: --timeout=abc: invalid numeric value"),
        ([b"--server", b"-re.iLsfxCIvu", b"--iconv=utf8", b".", b"mod/"], Unsupported,
         "rsync: The server is configured to refuse --iconv"),
        ([b"--server", b"-re.iLsfxCIvu", b"--write-devices", b".", b"mod/"], Unsupported,
         "rsync: The server is configured to refuse --write-devices"),
        ([b"--server", b"-re.iLsfxCIvu", b"--link-dest=a", b"--copy-dest=b", b".", b"mod/"], Unsupported,
         "rsync: ERROR: the --copy-dest option conflicts with the --link-dest option"),
        ([b"--server", b"-re.iLsfxCIvu", *[b"--link-dest=d%d" % i for i in range(21)], b".", b"mod/"],
         Unsupported, "rsync: ERROR: at most 20 --link-dest args may be specified"),
        ([b"-re.iLsfxCIvu", b".", b"mod/"], ProtocolError, None),
    ],
)
def test_bad_args_are_refused_as_rsyncd_refuses_them(argv, error, message):
    with pytest.raises(error) as info:
        parse_server_args(argv)
    if message is not None:
        assert (str(info.value), info.value.exit_code) == (message, ExitCode.UNSUPPORTED)


def test_lenient_parse_keeps_capabilities_for_the_error_path():
    opts, error = parse_server_args_lenient([b"--server", b"-vlogDtprUze.iLsfxCIvu", b".", b"mod/"])
    assert isinstance(error, Unsupported)
    assert opts.capabilities == ".iLsfxCIvu" and opts.compress


@pytest.mark.parametrize(("cluster", "level"), [(b"-logDtpre.iLsfxCIvu", 0), (b"-logDtpXre.iLsfxCIvu", 1),
                                                (b"-logDtpXXre.iLsfxCIvu", 2)])
def test_xattrs_letter_counts(cluster, level):
    opts = parse_server_args([b"--server", cluster, b".", b"mod/"])
    assert opts.xattrs == level and opts.recursive


def test_acls_imply_perms():
    opts = parse_server_args([b"--server", b"-rAe.iLsfxCIvu", b".", b"mod/"])
    assert opts.acls and opts.perms


def test_unbackslash():
    assert unbackslash(b"bk\\ dir\\\\x") == b"bk dir\\x"


def test_compat_flags_and_lists_of_a_stock_client():
    opts = parse_server_args([b"--server", b"-vlogDtpre.iLsfxCIvu", b".", b"mod/"])
    plan = plan_setup(opts)
    # rsyncd sends 0x1fe; backupd has no --iconv, so it leaves out CF_SYMLINK_ICONV (0x4).
    assert int(plan.compat_flags) == 0x1FA
    assert plan.send_checksum_list and not plan.send_compress_list
    neg = finish_setup(plan, opts, client_checksums=b"xxh128 xxh3 xxh64 md5 md4 sha1", client_compressions=None,
                       our_checksums=("xxh128", "xxh3", "xxh64", "md5"), seed=7)
    assert (neg.checksum, neg.compression, neg.seed) == ("xxh128", None, 7)
    assert plan.compat_flags & CompatFlags.CHKSUM_SEED_FIX


def test_choice_follows_the_clients_order():
    assert choose_name(b"md5 xxh128", ("xxh128", "md5"), "checksum") == "md5"
    assert choose_name(b"zstd lz4 zlibx zlib", ("zlibx", "zlib", "none"), "compress") == "zlibx"
    with pytest.raises(Unsupported):
        choose_name(b"sha1", ("xxh128", "md5"), "checksum")
