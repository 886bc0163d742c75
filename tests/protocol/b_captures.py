"""Just enough of an rsync session parser to cut vectors out of the b-* captures.

Capture format (shared/captures/b-README.md): records of 1 direction byte
(``C``/``S``), an 8-byte LE double, a 4-byte LE length and the payload.
Handles what the b-* push/pull captures use: daemon greeting, arguments,
compat flags, name lists, seed, multiplexed MSG_DATA, filter list, a
simple file list (-rt, no -o/-g/-l/-D), ndx, iflags, sum heads and sums.
Independent of backupd (test data only).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "captures"
B_DATA = CAPTURES / "b-data"
DIGEST_LEN = {"xxh128": 16, "xxh3": 8, "xxh64": 8, "md5": 16, "md4": 16, "sha1": 20}


class Cursor:
    """Reads bytes front to back; ``read(n)`` returns exactly n bytes or raises EOFError."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def left(self) -> int:
        return len(self.data) - self.pos

    def read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EOFError(f"short capture stream at {self.pos} (+{n})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.read(1)[0]

    def int32(self) -> int:
        return struct.unpack("<i", self.read(4))[0]

    def line(self) -> bytes:
        end = self.data.index(b"\n", self.pos)
        out, self.pos = self.data[self.pos : end], end + 1
        return out

    def varint(self) -> int:
        first = self.byte()
        extra = 0
        while extra < 6 and first & (0x80 >> extra):
            extra += 1
        raw = self.read(extra) + bytes([first & ((1 << (8 - extra)) - 1)])
        return int.from_bytes(raw, "little")

    def varlong(self, min_bytes: int) -> int:
        head = self.read(min_bytes)
        extra = 0
        while extra < 6 and head[0] & (0x80 >> extra):
            extra += 1
        raw = head[1:] + self.read(extra) + bytes([head[0] & ((1 << (8 - extra)) - 1)])
        return int.from_bytes(raw, "little")

    def vstring(self) -> bytes:
        n = self.byte()
        if n & 0x80:
            n = (n & 0x7F) << 8 | self.byte()
        return self.read(n)


class NdxReader:
    """Protocol-30 ndx decoding (io.c read_ndx); one per direction."""

    def __init__(self) -> None:
        self.prev = {False: -1, True: 1}

    def read(self, cur: Cursor) -> int:
        b = cur.byte()
        if b == 0:
            return -1                     # NDX_DONE
        negative = b == 0xFF
        if negative:
            b = cur.byte()
        if b == 0xFE:
            hi, lo = cur.byte(), cur.byte()
            if hi & 0x80:
                b2, b3 = cur.byte(), cur.byte()
                value = (hi & 0x7F) << 24 | lo | b2 << 8 | b3 << 16
            else:
                value = (hi << 8 | lo) + self.prev[negative]
        else:
            value = b + self.prev[negative]
        self.prev[negative] = value
        return -value if negative else value


@dataclass
class Request:
    """One generator request with ITEM_TRANSFER: sum head bytes and the raw sums after it."""

    ndx: int
    name: str
    head: bytes
    sums: bytes


@dataclass
class Capture:
    name: str
    role: str                     # "push" (client sends) or "pull" (server sends)
    args: list[str]
    compat: int
    checksum: str
    compression: str | None
    seed: int
    names: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    sender: bytes = b""           # sender's MSG_DATA stream right after the file list

    @property
    def digest_len(self) -> int:
        return DIGEST_LEN[self.checksum]

    @property
    def append(self) -> int:
        return self.args.count("--append")


def _records(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    streams = {b"C": bytearray(), b"S": bytearray()}
    pos = 0
    while pos < len(raw):
        n = struct.unpack_from("<I", raw, pos + 9)[0]
        streams[raw[pos : pos + 1]] += raw[pos + 13 : pos + 13 + n]
        pos += 13 + n
    return bytes(streams[b"C"]), bytes(streams[b"S"])


def _demux(cur: Cursor) -> bytes:
    out = bytearray()
    while cur.left() >= 4:
        header = struct.unpack("<I", cur.read(4))[0]
        payload = cur.read(header & 0xFFFFFF)
        if header >> 24 == 7:               # MSG_DATA
            out += payload
    return bytes(out)


def _setup(c: Cursor, s: Cursor) -> dict:
    c.line(), s.line()                      # greetings
    c.line()                                # module
    while not s.line().startswith(b"@RSYNCD: OK"):
        pass
    args = []
    while (arg := c.read(c.data.index(b"\0", c.pos) - c.pos)) or True:
        c.read(1)
        if not arg:
            break
        args.append(arg.decode())
    info = {"args": args, "compat": s.varint()}
    shorts = "".join(a[1:].split("e.")[0] for a in args if a[:1] == "-" and a[1:2] != "-")
    forced = [a.split("=", 1)[1] for a in args if a.startswith("--checksum-choice=")]
    if forced:
        info["checksum"] = forced[0].split(",")[0]
    else:
        server, client = s.vstring().split(), c.vstring().split()
        info["checksum"] = next(x for x in client if x in server).decode()
    info["compression"] = _compression(args, shorts, c, s)
    info["seed"] = s.int32()
    return info


def _compression(args: list[str], shorts: str, c: Cursor, s: Cursor) -> str | None:
    if "--new-compress" in args:
        return "zlibx"
    if "--old-compress" in args:
        return "zlib"
    chosen = [a.split("=", 1)[1] for a in args if a.startswith("--compress-choice=")]
    if chosen:
        return chosen[0]
    if "z" in shorts:
        server, client = s.vstring().split(), c.vstring().split()
        return next(x for x in client if x in server).decode()
    return None


def _skip_filter_list(cur: Cursor) -> None:
    while n := cur.int32():
        cur.read(n)


def _file_list(cur: Cursor) -> list[str]:
    names, name = [], b""
    while flags := cur.varint():
        keep = cur.byte() if flags & 0x20 else 0          # XMIT_SAME_NAME
        n = cur.varint() if flags & 0x40 else cur.byte()   # XMIT_LONG_NAME
        name = name[:keep] + cur.read(n)
        cur.varlong(3)                                     # size
        if not flags & 0x80:                               # XMIT_SAME_TIME
            cur.varlong(4)
        if flags & 0x2000:                                 # XMIT_MOD_NSEC
            cur.varint()
        if not flags & 0x02:                               # XMIT_SAME_MODE
            cur.int32()
        names.append(name.decode())
    cur.varint()                                           # io_error
    return names


def _item_transfers(cur: Cursor) -> bool:
    """Read an item's iflags and their trailer (fnamecmp type, xname); True if ITEM_TRANSFER."""
    iflags = struct.unpack("<H", cur.read(2))[0]
    if iflags & 0x0800:                                    # ITEM_BASIS_TYPE_FOLLOWS
        cur.byte()
    if iflags & 0x1000:                                    # ITEM_XNAME_FOLLOWS
        cur.vstring()
    return bool(iflags & 0x8000)                           # ITEM_TRANSFER


def _requests(cur: Cursor, names: list[str], append: bool) -> list[Request]:
    ndxs, out = NdxReader(), []
    while cur.left():
        ndx = ndxs.read(cur)
        if ndx < 0:
            if ndx == -3:                                  # NDX_DEL_STATS
                for _ in range(5):
                    cur.varint()
            continue
        if not _item_transfers(cur):
            continue
        head = cur.read(16)
        count, _, s2_len, _ = struct.unpack("<4i", head)
        sums = b"" if append else cur.read(count * (4 + s2_len))
        out.append(Request(ndx, names[ndx], head, sums))
    return out


def load(name: str) -> Capture:
    """Parse ``tests/data/captures/<name>.bin`` (role from the name: b-push-* / b-pull-*)."""
    c_raw, s_raw = _records(CAPTURES / f"{name}.bin")
    c, s = Cursor(c_raw), Cursor(s_raw)
    info = _setup(c, s)
    role = "pull" if name.startswith("b-pull") else "push"
    c_data, s_data = Cursor(_demux(c)), Cursor(_demux(s))
    if role == "pull" or any(a.startswith("--delete") for a in info["args"]):
        _skip_filter_list(c_data)
    sender, generator = (c_data, s_data) if role == "push" else (s_data, c_data)
    names = _file_list(sender)
    cap = Capture(name, role, **info, names=names)
    cap.requests = _requests(generator, names, append=bool(cap.append))
    cap.sender = sender.data[sender.pos :]
    return cap


def basis_dir(cap: Capture) -> Path:
    """The receiver's old files for this capture."""
    return B_DATA / ("prefix" if cap.append else "old")


def new_dir(cap: Capture) -> Path:
    """The sender's files for this capture."""
    return B_DATA / ("old" if cap.append else "new")


@dataclass
class Transfer:
    """One file in the sender's stream: its ndx, sum head echo, token bytes and file sum."""

    ndx: int
    name: str
    head: bytes
    tokens: bytes
    file_sum: bytes
    decoded: object = None        # whatever ``read_tokens`` returned


def sender_transfers(cap: Capture, read_tokens) -> list[Transfer]:
    """Walk the sender's stream; ``read_tokens(cursor, head, name)`` consumes one file's tokens.

    Stops at the end of the stream, or for a pull at the server's third
    NDX_DONE (the statistics follow it).
    """
    cur, ndxs, dones, out = Cursor(cap.sender), NdxReader(), 0, []
    while cur.left():
        ndx = ndxs.read(cur)
        if ndx == -1:
            dones += 1
            if cap.role == "pull" and dones == 3:
                break
            continue
        if not _item_transfers(cur):
            continue
        head = cur.read(16)
        start = cur.pos
        decoded = read_tokens(cur, head, cap.names[ndx])
        tokens = cur.data[start : cur.pos]
        out.append(Transfer(ndx, cap.names[ndx], head, tokens, cur.read(cap.digest_len), decoded))
    return out
