"""loguru sinks, and rsyncd's per-file transfer log in its ``log format``.

Sinks: readable lines on stderr by default, one compact JSON object per
line with ``--log-json``, and the config's ``log file`` (reopened when
logrotate moves it). Every record carries ``extra[session]`` (``-`` outside
a session).

Transfer log: with ``transfer logging = yes`` a module logs one line per
received file (``recv``) and per deleted entry (``del.``) in its
``log format``, expanded by the pure ``format_transfer_line``. Source:
rsync log.c log_formatted(), log_item(), log_delete(); rsyncd.conf(5)
"log format". The two hooks ``file_received`` (receiver commit) and
``file_deleted`` (generator delete) also count files for the metrics.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from backupd.errors import ConfigError
from backupd.ops import metrics
from backupd.protocol.constants import ItemFlags

HUMAN_FORMAT = "{time:YYYY-MM-DD HH:mm:ss} [{process}] {level: <7} {extra[session]} {message}"
DEFAULT_LOG_FORMAT = "%o %h [%a] %m (%u) %f %l"  # rsyncd.conf(5) default
DELETE_FALLBACK_FORMAT = "deleting %n"  # log.c log_delete() without %o or %i
UNDETERMINED_HOST = "UNDETERMINED"  # rsync clientname.c with `reverse lookup = no`
ITEM_MISSING_DATA = 1 << 16  # rsync.h: flags log_formatted() sees, never on the wire
ITEM_DELETED = 1 << 17


# ---------------------------------------------------------------- sinks


def setup_logging(*, json: bool = False, log_file: Path | None = None, level: str = "INFO") -> None:
    """Replace loguru's default sink: stderr (or the log file's std stream) and ``log file``.

    ``log file = /dev/stdout`` (or ``/dev/stderr``) logs to that stream instead
    of stderr, as the classic container setups write it.

    Raises:
        ConfigError: ``log_file`` cannot be opened for appending.
    """
    logger.remove()
    logger.configure(extra={"session": "-"}, patcher=_add_json if json else _no_patch)
    fmt = _json_format if json else HUMAN_FORMAT
    common = {"level": level, "format": fmt, "backtrace": False, "diagnose": False}
    std = {"/dev/stdout": sys.stdout, "/dev/stderr": sys.stderr}.get(os.fspath(log_file or ""))
    logger.add(std or sys.stderr, colorize=False if json else None, **common)
    if log_file is None or std is not None:
        return
    try:
        logger.add(os.fspath(log_file), watch=True, encoding="utf-8", **common)
    except OSError as exc:
        raise ConfigError(
            f"log file {log_file}: cannot open for appending: {exc.strerror}"
        ) from None


def _no_patch(record: dict) -> None:
    """loguru patcher that changes nothing (``configure(patcher=None)`` keeps the old one)."""


def _json_format(record: dict) -> str:
    """A callable format, so loguru appends no traceback after the JSON line."""
    return "{extra[_json]}\n"


def _add_json(record: dict) -> None:
    """loguru patcher: put the record's JSON line in ``extra[_json]``.

    Shape: ``{"time": ISO 8601 with offset, "level", "pid", "session",
    "message", <other extras>, "exception": traceback text}``.
    """
    extra = {k: v for k, v in record["extra"].items() if k != "_json"}
    doc = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "pid": record["process"].id,
        "session": extra.pop("session", "-"),
        "message": record["message"],
    }
    doc.update(
        {
            k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
            for k, v in extra.items()
        }
    )
    if record["exception"] is not None:
        import traceback

        exc = record["exception"]
        doc["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    record["extra"]["_json"] = json.dumps(doc, ensure_ascii=False)


# ---------------------------------------------------------------- the log format


@dataclass(frozen=True)
class TransferItem:
    """What one transfer log line may show; the fields of rsync's log_formatted().

    ``name`` is ``%n`` (relative to the transfer root), ``path`` is ``%f``
    (relative to the module). Sizes in bytes, ``mtime`` in seconds since the
    epoch. ``iflags`` are ItemFlags plus ITEM_DELETED / ITEM_MISSING_DATA.
    """

    op: str  # "recv", "send" or "del."
    name: bytes
    path: bytes
    mode: int = 0
    size: int = 0
    mtime: int = 0
    uid: int | None = None
    gid: int | None = None
    iflags: int = 0
    module: str = ""
    module_path: str = ""
    user: str = ""
    host: str = UNDETERMINED_HOST
    addr: str = ""
    pid: int = 0
    bytes_in: int = 0  # %b on a receiver
    bytes_out: int = 0  # %c on a receiver
    link_target: bytes | None = None
    hlink: bytes | None = None
    file_sum: bytes | None = None
    preserve_times: bool = True


_ESCAPE = re.compile(r"%(-?)(\d*)('*)(.?)", re.S)
_NUMERIC = frozenset("lbcpU")


def format_transfer_line(fmt: str, item: TransferItem, *, now: float) -> str:
    """Expand rsyncd's ``log format`` escapes for one item (no trailing newline).

    ``%[-][width]['...]X``: ``-`` left-justifies, a width pads (a leading 0
    zero-pads numbers), apostrophes humanize numbers (1: 1,234,567;
    2: 1.23M in powers of 1000; 3: 1.18M in powers of 1024). An unknown
    escape stays as written, as rsync leaves it. ``now`` (seconds since
    the epoch) is ``%t``; times are local. Source: rsync log.c
    log_formatted(); rsyncd.conf(5) "log format".
    """
    out, pos = [], 0
    while (start := fmt.find("%", pos)) >= 0:
        m = _ESCAPE.match(fmt, start)
        dash, width, quotes, code = m.groups()
        value = _expand(code, item, now, len(quotes), dash, width) if code else None
        if value is None:  # unknown: keep the '%' and rescan after it
            out.append(fmt[pos : start + 1])
            pos = start + 1
            continue
        out.append(fmt[pos:start])
        out.append(value if code == "L" else _pad(value, dash, width, code in _NUMERIC))
        pos = m.end()
    out.append(fmt[pos:])
    return "".join(out)


def _expand(
    code: str, item: TransferItem, now: float, human: int, dash: str, width: str
) -> str | None:
    """The text of one escape, before padding; None for an unknown escape."""
    if code in _NUMERIC:
        number = {
            "l": item.size,
            "b": item.bytes_in,
            "c": item.bytes_out,
            "p": item.pid,
            "U": item.uid or 0,
        }[code]
        return human_number(number, human)
    simple = {
        "o": item.op,
        "m": item.module,
        "P": item.module_path,
        "u": item.user,
        "h": item.host,
        "a": item.addr,
    }
    if code in simple:
        return simple[code]
    if code == "f":
        return safe_name(item.path).lstrip("/")
    if code == "n":
        return safe_name(item.name) + ("/" if stat.S_ISDIR(item.mode) else "")
    if code == "t":
        return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now))
    if code == "M":
        return time.strftime("%Y/%m/%d-%H:%M:%S", time.localtime(item.mtime))
    if code == "G":
        return "DEFAULT" if item.gid is None else str(item.gid)
    if code == "B":
        return permstring(item.mode)
    if code == "i":
        return itemize(item.iflags, item.mode, item.op, preserve_times=item.preserve_times)
    if code == "L":
        return _link_text(item, dash, width)
    if code == "C":
        return item.file_sum.hex() if item.file_sum else ""
    return None


def _pad(value: str, dash: str, width: str, numeric: bool) -> str:
    if not width or not int(width):
        return value
    size = int(width)
    if dash:
        return value.ljust(size)
    if numeric and width.startswith("0") and value.lstrip("-").isdigit():
        return value.zfill(size)
    return value.rjust(size)


def _link_text(item: TransferItem, dash: str, width: str) -> str:
    """``%L``: `` => HARDLINK``, `` -> SYMLINK``, or "" (4 spaces if a width is given).

    A width pads the name after the arrow, as log.c does.
    """
    if item.hlink:
        return " => " + _pad(safe_name(item.hlink), dash, width, False)
    if stat.S_ISLNK(item.mode) and item.link_target is not None:
        return " -> " + _pad(safe_name(item.link_target), dash, width, False)
    return "    " + _pad("", dash, width, False) if width else ""


def human_number(number: int, level: int) -> str:
    """rsync's --human-readable levels: 0 digits, 1 ``1,234``, 2 powers of 1000, 3 of 1024."""
    if level <= 0:
        return str(number)
    if level == 1:
        return f"{number:,}"
    mult = 1000 if level == 2 else 1024
    if -mult < number < mult:
        return str(number)
    value, units = float(number), "KMGTPE"
    for unit in units:
        value /= mult
        if -mult < value < mult or unit == units[-1]:
            return f"{value:.2f}{unit}"
    raise AssertionError("unreachable")


def permstring(mode: int) -> str:
    """``%B``: nine permission characters, ``rwxr-sr-t`` style (ls -l without the type)."""
    chars = []
    for shift, special, flag in (
        (6, stat.S_ISUID, "s"),
        (3, stat.S_ISGID, "s"),
        (0, stat.S_ISVTX, "t"),
    ):
        bits = (mode >> shift) & 7
        x = "x" if bits & 1 else "-"
        if mode & special:
            x = flag if bits & 1 else flag.upper()
        chars.append(("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + x)
    return "".join(chars)


def itemize(iflags: int, mode: int, op: str, *, preserve_times: bool = True) -> str:
    """``%i``: the 11-character itemize string (``>f+++++++++``, ``>f.st......``).

    Source: rsync log.c log_formatted() case 'i'; rsync(1) --itemize-changes.
    """
    if iflags & ITEM_DELETED:
        return "*deleting  "
    if iflags & ItemFlags.LOCAL_CHANGE:
        first = "h" if iflags & ItemFlags.XNAME_FOLLOWS else "c"
    else:
        first = "." if not iflags & ItemFlags.TRANSFER else "<" if op.startswith("s") else ">"
    kind = (
        "L"
        if stat.S_ISLNK(mode)
        else "d"
        if stat.S_ISDIR(mode)
        else "S"
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        else "D"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "f"
    )
    time_char = "T" if not preserve_times else "t"
    flags = [
        (ItemFlags.REPORT_CHANGE, "c"),
        (ItemFlags.REPORT_SIZE, "." if kind == "L" else "s"),
        (ItemFlags.REPORT_TIME, time_char),
        (ItemFlags.REPORT_PERMS, "p"),
        (ItemFlags.REPORT_OWNER, "o"),
        (ItemFlags.REPORT_GROUP, "g"),
        (ItemFlags.REPORT_ATIME, "u"),
        (ItemFlags.REPORT_ACL, "a"),
        (ItemFlags.REPORT_XATTR, "x"),
    ]
    rest = "".join(ch if iflags & flag else "." for flag, ch in flags)
    if iflags & (ItemFlags.IS_NEW | ITEM_MISSING_DATA):
        rest = ("+" if iflags & ItemFlags.IS_NEW else "?") * len(rest)
    elif first in ".hc" and rest == "." * len(rest):
        rest = " " * len(rest)
    return first + kind + rest


def safe_name(name: bytes) -> str:
    r"""A wire name for a log line: UTF-8; other bytes and controls as ``\#ooo``.

    Source: rsync log.c safe_fname().
    """
    text = name.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\#{code - 0xDC00:03o}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\#{code:03o}")
        else:
            out.append(ch)
    return "".join(out)


def derive_iflags(
    entry_mode: int, entry_size: int, entry_mtime: int, old: os.stat_result | None, opts
) -> int:
    """The ItemFlags of a received file, from the file it replaced (``old``, None if new).

    Mirrors the generator's choice (generator.py _request_file): IS_NEW, or
    size, time (``T`` without -t), perms (-p) and -c changes.
    """
    iflags = ItemFlags.TRANSFER
    if old is None:
        return iflags | ItemFlags.IS_NEW
    if old.st_size != entry_size:
        iflags |= ItemFlags.REPORT_SIZE
    if not opts.times or old.st_mtime_ns // 1_000_000_000 != entry_mtime:
        iflags |= ItemFlags.REPORT_TIME
    if opts.perms and (old.st_mode & 0o7777) != (entry_mode & 0o7777):
        iflags |= ItemFlags.REPORT_PERMS
    if opts.checksum:
        iflags |= ItemFlags.REPORT_CHANGE
    return iflags


# ---------------------------------------------------------------- hooks (roles -> here)


def file_received(receiver, entry, path: bytes, old: os.stat_result | None) -> None:
    """Hook, receiver commit: count the file; log it if the module has transfer logging.

    ``%b`` is the literal (non-matched) data received for this file, redo
    included; ``%c`` is 0 (the generator's sums are not tracked per file).
    Never raises: a logging problem must not fail a transfer.
    """
    try:
        record = metrics.session_record(receiver.out)
        literal = record.literal_delta(receiver.bytes_literal) if record is not None else 0
        module = record.module if record is not None else None
        metrics.file_received(module.name if module else "-", entry.size, literal)
        if module is None or not module.transfer_logging:
            return
        opts = receiver.opts
        item = _session_item(
            record,
            "recv",
            entry.name,
            path,
            mode=entry.mode,
            size=entry.size,
            mtime=entry.mtime,
            uid=entry.uid if opts.owner else None,
            gid=entry.gid if opts.group else None,
            iflags=derive_iflags(entry.mode, entry.size, entry.mtime, old, opts),
            bytes_in=literal,
            preserve_times=opts.times,
        )
        _emit(record, module.log_format or DEFAULT_LOG_FORMAT, item)
    except Exception:  # noqa: BLE001 - logged, never fatal
        logger.exception("transfer log hook failed")


def file_deleted(generator, rel: bytes, is_dir: bool, items) -> None:
    """Hook, generator delete: count ``rel`` and ``items`` (its contents); log each as ``del.``.

    ``items`` are ``(rel, is_dir, ...)`` tuples, deepest first, as the
    generator sends MSG_DELETED for them; names are relative to the transfer
    root (``%n``), ``%f`` adds the destination dir inside the module. Nothing
    is counted or logged on --dry-run (log.c log_delete()). Never raises.
    """
    if generator.opts.dry_run:
        return
    try:
        record = metrics.session_record(generator.out)
        module = record.module if record is not None else None
        entries = [(item[0], item[1]) for item in items] + [(rel, is_dir)]
        metrics.files_deleted(module.name if module else "-", len(entries))
        if module is None or not module.transfer_logging:
            return
        fmt = module.log_format or DEFAULT_LOG_FORMAT
        if not log_format_has(fmt, "o") and not log_format_has(fmt, "i"):
            fmt = DELETE_FALLBACK_FORMAT
        base = getattr(getattr(generator, "state", None), "dest_dir", b".")
        for name, name_is_dir in entries:
            mode = stat.S_IFDIR if name_is_dir else stat.S_IFREG
            path = name if base in (b"", b".") else base.rstrip(b"/") + b"/" + name
            item = _session_item(record, "del.", name, path, mode=mode, iflags=ITEM_DELETED)
            _emit(record, fmt, item)
    except Exception:  # noqa: BLE001 - logged, never fatal
        logger.exception("transfer log hook failed")


def log_format_has(fmt: str, code: str) -> bool:
    """Whether ``fmt`` uses the escape ``code`` (as rsync log.c checks for %o and %i)."""
    return any(m.group(4) == code for m in _ESCAPE.finditer(fmt))


def _session_item(record, op: str, name: bytes, path: bytes, **fields) -> TransferItem:
    session, module = record.session, record.module
    request = getattr(session, "request", None)
    return TransferItem(
        op=op,
        name=name,
        path=path,
        module=module.name,
        module_path=os.fspath(module.path),
        user=(getattr(request, "user", None) or ""),
        host=record.host(),
        addr=session.ctx.peer_addr,
        pid=os.getpid(),
        **fields,
    )


def _emit(record, fmt: str, item: TransferItem) -> None:
    line = format_transfer_line(fmt, item, now=time.time())
    logger.bind(session=record.session.ctx.session_id, transfer=item.op, module=item.module).info(
        line
    )
