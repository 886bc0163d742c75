"""Forged push streams that used to end in "internal error" (exit 15, issue 15.9).

Each is the recorded push ``b-push-new`` (``rsync -rt --no-inc-recursive``,
one 20,000-byte file ``a.bin``) with a few bytes changed, sent to stock
rsyncd and to backupd with the same module. backupd must answer as rsyncd
does where rsyncd's answer is a clean one, and never with a traceback.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import free_port, render_rsyncd_conf
from tests.interop.crafted import edit, frame, records, talk, wait_for

CAPTURE = "b-push-new.bin"
FILE_SUM = bytes.fromhex("ca66a8b1f1e26beabd172220ce100126")  # a.bin's xxh128 in the capture


def _with_redo(recs: list[bytes]) -> list[bytes]:
    """The file sent again in the redo phase (ndx 1 after ndx 1: 0xFE + diff 0), as a client redoes it."""
    recs = list(recs)
    at = next(i for i, r in enumerate(recs) if len(r) > 20000)
    payload = recs[at][4:]
    recs.insert(at + 1, frame(b"\xfe\x00\x00" + payload[1:-1] + b"\x00"))
    return recs


def _case(name: str) -> list[bytes]:
    base = records(CAPTURE)
    if name == "double-slash":
        return edit(base, b"\x05a.bin", b"\x08x//a.bin")
    if name == "trailing-slash":
        return edit(base, b"\x05a.bin", b"\x06a.bin/")
    if name == "long-destination":
        return edit(base, b"\x00m/\x00\x00", b"\x00m/" + b"d" * 300 + b"\x00\x00")
    if name == "compress-choice-empty":
        return edit(base, b"\x00.\x00m/", b"\x00--compress-choice=\x00.\x00m/")
    if name == "compress-choice-no-value":
        return edit(base, b"\x00.\x00m/", b"\x00--compress-choice\x00.\x00m/")
    if name == "non-utf8-verification-failed":
        bad = _with_redo(edit(base, FILE_SUM, bytes(16)))
        return edit(edit(bad, b"\x05a.bin", b"\x06a\xff.bin"), b"-tre.", b"-vtre.")
    raise AssertionError(name)


@pytest.fixture
def servers(stock_rsyncd, backupd_server, tmp_path):
    paths = {kind: tmp_path / kind / "m" for kind in ("rsyncd", "backupd")}
    for path in paths.values():
        path.mkdir(parents=True)
    params = {"read only": False, "munge symlinks": False, "numeric ids": True}
    rsyncd = stock_rsyncd({"m": {"path": paths["rsyncd"], **params}})
    port = free_port()
    conf = tmp_path / "backupd.conf"
    conf.write_text(render_rsyncd_conf(port, {"reverse lookup": False}, {"m": {"path": paths["backupd"], **params}}))
    return {"rsyncd": rsyncd, "backupd": backupd_server(conf, port=port)}, paths


REQUEST = b"\x00\xa0"  # iflags IS_NEW|TRANSFER: the generator asks for a.bin
REDO_REQUEST = b"\xfe\x00\x00\x00\xa0"  # the same ndx again, in the redo phase


def _send(server, recs: list[bytes], done_text: str) -> tuple[bytes, str]:
    start = server.log_path.stat().st_size
    data = [i for i, r in enumerate(recs) if len(r) > 20000]
    waits = {data[0]: REQUEST, **({data[1]: REDO_REQUEST} if len(data) > 1 else {})} if data else {}
    answer = talk(server.port, recs, waits)
    return answer, wait_for(server.log_path, done_text, start)


def _backupd_code(log: str) -> int:
    codes = re.findall(r"session ended with code (\d+)", log)
    assert codes, log
    return int(codes[-1])


# (case, backupd's exit codes, what rsyncd says (answer or log), what backupd sends)
CASES = [
    # both clean the name (util1.c clean_fname) to x/a.bin, whose parent is missing: rsyncd
    # aborts ("invalid path", exit 2) or fails the file (mkstemp, exit 23), as its processes race
    ("double-slash", {2, 23}, b"x/a.bin", b"x/a.bin"),
    # cleaned to a.bin: an ordinary push
    ("trailing-slash", {0}, None, None),
    # main.c get_local_name: "ERROR: cannot stat destination ...: File name too long (36)", exit 3
    ("long-destination", {3}, b"cannot stat destination", b"cannot stat destination"),
    # compat.c: "unknown compress name: ", exit 4
    ("compress-choice-empty", {4}, b"unknown compress name: ", b"unknown compress name: "),
    # popt would take '.' as the value; backupd parses options up to '.' and answers as rsyncd
    # answers an option it cannot parse (clientserver.c rsync_module: option_error, exit 4)
    ("compress-choice-no-value", {4}, None, b"--compress-choice: missing argument"),
    # the name's own bytes in both messages, as rsyncd sends them
    ("non-utf8-verification-failed", {23}, b"ERROR: a\xff.bin failed verification -- update discarded.\n",
     b"ERROR: a\xff.bin failed verification -- update discarded.\n"),
]


@pytest.mark.parametrize(("case", "codes", "rsyncd_says", "backupd_says"), CASES, ids=[c[0] for c in CASES])
def test_forged_input_gets_a_clean_answer(servers, case, codes, rsyncd_says, backupd_says):
    by_kind, paths = servers
    recs = _case(case)
    answer, log = _send(by_kind["rsyncd"], recs, "rsync error" if rsyncd_says else "\n")
    if rsyncd_says is not None:
        assert rsyncd_says in answer or rsyncd_says in log.encode("utf-8", "surrogateescape"), (answer, log)
    answer, log = _send(by_kind["backupd"], recs, "session ended with code")
    assert "Traceback" not in log and "internal error" not in log, log
    assert _backupd_code(log) in codes, log
    if backupd_says is not None:
        assert backupd_says in answer, answer
    if case == "trailing-slash":
        assert (paths["backupd"] / "a.bin").stat().st_size == 20000
        assert (paths["backupd"] / "a.bin").read_bytes() == (paths["rsyncd"] / "a.bin").read_bytes()
    if case == "non-utf8-verification-failed":
        warning = b"WARNING: a\xff.bin failed verification -- update discarded (will try again).\n"
        assert warning in answer
