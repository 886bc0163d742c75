import json
import stat
import sys
import time
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from backupd.config.model import ModuleConfig
from backupd.errors import ConfigError
from backupd.ops import logging as ops_logging
from backupd.ops import metrics
from backupd.ops.logging import (
    ITEM_DELETED,
    TransferItem,
    format_transfer_line,
    human_number,
    itemize,
    log_format_has,
    permstring,
    safe_name,
    setup_logging,
)
from backupd.protocol.constants import ItemFlags

REG = stat.S_IFREG | 0o644
NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC

ITEM = TransferItem(
    op="recv",
    name=b"docs/a.txt",
    path=b"backup/docs/a.txt",
    mode=REG,
    size=1234567,
    mtime=NOW - 60,
    uid=1000,
    gid=100,
    iflags=ItemFlags.TRANSFER | ItemFlags.IS_NEW,
    module="data",
    module_path="/srv/data",
    user="alice",
    host="client.example",
    addr="192.0.2.7",
    pid=4242,
    bytes_in=5000,
    bytes_out=12,
)


@pytest.fixture(autouse=True)
def _utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("fmt", "line"),
    [
        (
            "%o %h [%a] %m (%u) %f %l",
            "recv client.example [192.0.2.7] data (alice) backup/docs/a.txt 1234567",
        ),
        ("%i %n%L", ">f+++++++++ docs/a.txt"),
        ("%t [%p] %b/%c bytes", "2023/11/14 22:13:20 [4242] 5000/12 bytes"),
        ("%M %B %U:%G %P", "2023/11/14-22:12:20 rw-r--r-- 1000:100 /srv/data"),
        ("[%10l] [%-10l] [%07p]", "[   1234567] [1234567   ] [0004242]"),
        ("%'l %''l %'''l", "1,234,567 1.23M 1.18M"),
        ("[%-6o] [%6m]", "[recv  ] [  data]"),
        ("%x %% %5q 100%", "%x %% %5q 100%"),  # unknown escapes stay as written
        ("tail %", "tail %"),
        ("%L|%5L|", "|         |"),  # no link: nothing, or 4 spaces + width
    ],
)
def test_log_format_escapes(fmt, line):
    assert format_transfer_line(fmt, ITEM, now=NOW) == line


def test_symlink_hardlink_and_directory_forms():
    link = TransferItem(
        op="recv", name=b"l", path=b"l", mode=stat.S_IFLNK | 0o777, link_target=b"../t"
    )
    hard = TransferItem(op="recv", name=b"h", path=b"h", mode=REG, hlink=b"first")
    folder = TransferItem(op="recv", name=b"d", path=b"/d", mode=stat.S_IFDIR | 0o755)
    assert format_transfer_line("%n%L", link, now=NOW) == "l -> ../t"
    assert format_transfer_line("%n%L", hard, now=NOW) == "h => first"
    assert format_transfer_line("%n|%f", folder, now=NOW) == "d/|d"  # %f: no leading or trailing /


def test_gid_not_preserved_is_default_and_no_user_is_empty():
    item = TransferItem(op="recv", name=b"f", path=b"f", mode=REG)
    assert format_transfer_line("%G (%u) %U", item, now=NOW) == "DEFAULT () 0"


@pytest.mark.parametrize(
    ("iflags", "mode", "op", "text"),
    [
        (ItemFlags.TRANSFER | ItemFlags.IS_NEW, REG, "recv", ">f+++++++++"),
        (
            ItemFlags.TRANSFER | ItemFlags.REPORT_SIZE | ItemFlags.REPORT_TIME,
            REG,
            "recv",
            ">f.st......",
        ),
        (
            ItemFlags.TRANSFER | ItemFlags.REPORT_CHANGE | ItemFlags.REPORT_PERMS,
            REG,
            "send",
            "<fc..p.....",
        ),
        (0, REG, "recv", ".f         "),
        (ItemFlags.REPORT_TIME, stat.S_IFDIR | 0o755, "recv", ".d..t......"),
        (ItemFlags.LOCAL_CHANGE | ItemFlags.IS_NEW, stat.S_IFLNK | 0o777, "recv", "cL+++++++++"),
        (ItemFlags.REPORT_OWNER | ItemFlags.REPORT_GROUP, stat.S_IFCHR, "recv", ".D....og..."),
        (ITEM_DELETED, REG, "del.", "*deleting  "),
    ],
)
def test_itemize_like_rsync(iflags, mode, op, text):
    assert itemize(iflags, mode, op) == text


def test_time_change_without_times_is_capital_t():
    assert (
        itemize(ItemFlags.TRANSFER | ItemFlags.REPORT_TIME, REG, "recv", preserve_times=False)
        == ">f..T......"
    )


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        (0o755, "rwxr-xr-x"),
        (0o4755, "rwsr-xr-x"),
        (0o2644, "rw-r-Sr--"),
        (0o1777, "rwxrwxrwt"),
        (0o1776, "rwxrwxrwT"),
        (0, "---------"),
    ],
)
def test_permstring(mode, text):
    assert permstring(stat.S_IFREG | mode) == text


@pytest.mark.parametrize(
    ("number", "level", "text"),
    [
        (1234567, 0, "1234567"),
        (1234567, 1, "1,234,567"),
        (999, 2, "999"),
        (1000, 2, "1.00K"),
        (1234567, 2, "1.23M"),
        (1023, 3, "1023"),
        (1048576, 3, "1.00M"),
        (5 * 1024**4, 3, "5.00T"),
    ],
)
def test_human_number_levels(number, level, text):
    assert human_number(number, level) == text


def test_safe_name_escapes_controls_and_bad_utf8():
    assert safe_name("naïve\n".encode() + b"\xff") == "naïve\\#012\\#377"


def test_log_format_has():
    assert log_format_has("%-10o x", "o") and log_format_has("%'''i", "i")
    assert not log_format_has("%% o i", "o")


@given(st.text(alphabet=st.characters(blacklist_characters="%"), max_size=80))
def test_text_without_escapes_is_unchanged(text):
    assert format_transfer_line(text, ITEM, now=NOW) == text


@given(st.text(alphabet="%-0123456789'abcfhilmnopstuBCGLMPU xyz", max_size=40))
def test_any_format_expands_without_error(fmt):
    line = format_transfer_line(fmt, ITEM, now=NOW)
    assert "\n" not in line


# ---------------------------------------------------------------- the hooks


def _session(module, outbox, peer="192.0.2.7"):
    ctx = SimpleNamespace(peer_addr=peer, session_id="s1", peer_host=lambda: None)
    return SimpleNamespace(ctx=ctx, outbox=outbox, request=SimpleNamespace(user="alice"))


@pytest.fixture
def captured():
    lines = []
    logger.remove()
    logger.configure(extra={"session": "-"})
    sink = logger.add(lambda m: lines.append(m.record), format="{message}")
    yield lines
    logger.remove(sink)
    logger.add(sys.stderr)


def test_received_and_deleted_files_are_logged_with_the_module_format(captured, tmp_path):
    module = ModuleConfig(
        name="data", path=tmp_path, transfer_logging=True, log_format="%o %i %f %l %b (%u) %h"
    )
    outbox = object()
    session = _session(module, outbox)
    metrics.session_started(session)
    metrics.session_module(session, module)
    opts = SimpleNamespace(
        owner=False, group=False, times=True, perms=True, checksum=False, dry_run=False
    )
    receiver = SimpleNamespace(out=outbox, opts=opts, bytes_literal=0)
    entry = SimpleNamespace(name=b"a.txt", mode=REG, size=10, mtime=NOW, uid=None, gid=None)
    old = SimpleNamespace(st_size=3, st_mtime_ns=NOW * 10**9, st_mode=REG)
    try:
        receiver.bytes_literal = 7
        ops_logging.file_received(receiver, entry, b"sub/a.txt", old)
        receiver.bytes_literal = 17
        ops_logging.file_received(receiver, entry, b"sub/b.txt", None)
        generator = SimpleNamespace(out=outbox, opts=opts, state=SimpleNamespace(dest_dir=b"sub"))
        ops_logging.file_deleted(generator, b"gone", True, [(b"gone/x", False, False)])
    finally:
        metrics.session_ended(session, 0)
    assert [r["message"] for r in captured] == [
        "recv >f.s....... sub/a.txt 10 7 (alice) UNDETERMINED",
        "recv >f+++++++++ sub/b.txt 10 10 (alice) UNDETERMINED",
        "del. *deleting   sub/gone/x 0 0 (alice) UNDETERMINED",
        "del. *deleting   sub/gone 0 0 (alice) UNDETERMINED",
    ]
    assert {r["extra"]["transfer"] for r in captured} == {"recv", "del."}


def test_no_transfer_line_without_transfer_logging_and_none_on_dry_run(captured, tmp_path):
    quiet = ModuleConfig(name="q", path=tmp_path)
    loud = ModuleConfig(name="l", path=tmp_path, transfer_logging=True)
    opts = SimpleNamespace(
        owner=False, group=False, times=True, perms=False, checksum=False, dry_run=True
    )
    for module in (quiet, loud):
        outbox = object()
        session = _session(module, outbox)
        metrics.session_started(session)
        metrics.session_module(session, module)
        try:
            gen = SimpleNamespace(out=outbox, opts=opts)
            ops_logging.file_deleted(gen, b"x", False, [])
            if module is quiet:
                rec = SimpleNamespace(out=outbox, opts=opts, bytes_literal=0)
                entry = SimpleNamespace(name=b"a", mode=REG, size=1, mtime=0, uid=None, gid=None)
                ops_logging.file_received(rec, entry, b"a", None)
        finally:
            metrics.session_ended(session, 0)
    assert captured == []


def test_deletion_falls_back_to_deleting_n_without_o_or_i(captured, tmp_path):
    module = ModuleConfig(name="m", path=tmp_path, transfer_logging=True, log_format="%f %l")
    outbox = object()
    session = _session(module, outbox)
    metrics.session_started(session)
    metrics.session_module(session, module)
    try:
        opts = SimpleNamespace(dry_run=False)
        ops_logging.file_deleted(SimpleNamespace(out=outbox, opts=opts), b"olddir", True, [])
    finally:
        metrics.session_ended(session, 0)
    assert [r["message"] for r in captured] == ["deleting olddir/"]


# ---------------------------------------------------------------- sinks


@pytest.fixture
def restore_logging():
    yield
    setup_logging()
    logger.remove()
    logger.add(sys.stderr)


def test_json_lines_carry_session_extras_and_traceback(capsys, restore_logging):
    setup_logging(json=True)
    logger.bind(session="ab12", module="data").info("hello {}", "world")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert (first["message"], first["session"], first["module"], first["level"]) == (
        "hello world",
        "ab12",
        "data",
        "INFO",
    )
    assert first["time"].count(":") >= 2 and isinstance(first["pid"], int)
    assert second["session"] == "-" and "ValueError: boom" in second["exception"]


def test_readable_default_and_log_file(capsys, tmp_path, restore_logging):
    log_file = tmp_path / "backupd.log"
    setup_logging(log_file=log_file)
    logger.bind(session="cafe").warning("disk almost full")
    err = capsys.readouterr().err
    assert "WARNING cafe disk almost full" in err
    assert "WARNING cafe disk almost full" in log_file.read_text()


def test_log_file_dev_stdout_replaces_stderr(capsys, restore_logging):
    setup_logging(log_file="/dev/stdout")
    logger.info("to stdout")
    out, err = capsys.readouterr()
    assert "to stdout" in out and err == ""


def test_unwritable_log_file_is_a_config_error(tmp_path, restore_logging):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="log file .*afile/x.log: cannot open"):
        setup_logging(log_file=tmp_path / "afile" / "x.log")
