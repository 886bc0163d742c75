"""Extended attributes (``-X``/``-XX``) on the wire, and rsync's name rules.

The file-list block, the cache by index, the request/answer exchange of
abbreviated values.

Wire, per file-list entry (after the entry and its ACL blocks)::

    varint ndx          0: a new set follows; n > 0: the same set as set n-1 sent before
    -- a new set:
    varint count
    count x { varint name_len (with the trailing NUL), varint value_len,
              name bytes + NUL,
              value bytes, or (value_len > 32) the 16-byte md5 of the value }

In the transfer phase, after ``ndx iflags [type] [xname]`` of an item with
``ITEM_REPORT_XATTR``, the generator sends the numbers (1-based, in the
sender's sorted order) of the abbreviated values it needs, as varint deltas
ended by a ``00`` byte; the sender's echo of that item carries, per number,
``varint delta, varint length, value bytes``, ended by ``00``.

Source: rsync xattrs.c send_xattr(), receive_xattr(), xattr_diff(),
send_xattr_request(), recv_xattr_request(), rsync_xal_get(), rsync_xal_set()
(Linux namespaces: HAVE_LINUX_XATTRS), compat.c (md5, no seed, protocol >= 30).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from backupd.errors import ProtocolError
from backupd.protocol.wire import Read, decode_varint, encode_varint

MAX_FULL_DATUM = 32                       # xattrs.c: longer values travel as a digest
DIGEST_LEN = 16                           # md5 (xattr_sum_len at protocol >= 30)
MAX_WIRE_XATTR_COUNT = 65536              # rsync.h
MAX_WIRE_XATTR_NAMELEN = 4096             # rsync.h, with the NUL
MAX_XATTR_VALUE_BYTES = 128 * 1024 * 1024  # xattrs.c, per value
MAX_XATTR_LIST_BYTES = 512 * 1024 * 1024   # xattrs.c, names + values of one set
USER_PREFIX = b"user."
SYSTEM_PREFIX = b"system."
RSYNC_PREFIX = b"user.rsync."             # Linux: where a non-root (fake-super) receiver keeps other namespaces
FAKE_SUPER_NAMES = (b"stat", b"aacl", b"dacl")  # rsync.%stat, rsync.%aacl, rsync.%dacl


def xattr_digest(value: bytes | memoryview) -> bytes:
    """The digest an abbreviated value travels as: md5, unseeded (xattrs.c sum_init(xattr_sum_nni))."""
    return hashlib.md5(value).digest()


@dataclass(frozen=True, slots=True)
class XattrItem:
    """One attribute of a set.

    ``name`` without the NUL; ``size`` is the value's length in bytes;
    ``value`` the value itself when ``size <= 32`` (else None: abbreviated);
    ``digest`` the md5 of an abbreviated value (else None); ``num`` the
    1-based position in the sender's sorted list (the request numbers).
    """

    name: bytes
    size: int
    value: bytes | None
    digest: bytes | None
    num: int

    @property
    def abbreviated(self) -> bool:
        """True when only the digest travels in the file list."""
        return self.size > MAX_FULL_DATUM

    def matches(self, value: bytes | None) -> bool:
        """True if a local ``value`` is this item's value (by digest when abbreviated)."""
        if value is None or len(value) != self.size:
            return False
        return xattr_digest(value) == self.digest if self.abbreviated else value == self.value


@dataclass(frozen=True, slots=True)
class XattrSet:
    """A set of attributes as cached by both ends: ``ndx`` is its index in the cache."""

    ndx: int
    items: tuple[XattrItem, ...]

    def by_num(self, num: int) -> XattrItem | None:
        """The item with request number ``num``, or None."""
        for item in self.items:
            if item.num == num:
                return item
        return None


def make_items(values: dict[bytes, bytes]) -> tuple[XattrItem, ...]:
    """Items of a local name -> value map, sorted by name and numbered as the sender numbers them."""
    out = []
    for num, name in enumerate(sorted(values), 1):
        value = values[name]
        if len(value) > MAX_FULL_DATUM:
            out.append(XattrItem(name, len(value), None, xattr_digest(value), num))
        else:
            out.append(XattrItem(name, len(value), bytes(value), None, num))
    return tuple(out)


# ---------------------------------------------------------------- name rules (Linux)


NameExcluded = Callable[[bytes], bool]


def keep_local_name(
    name: bytes, *, am_root: int, sender: bool, level: int, excluded: NameExcluded | None = None
) -> bool:
    """Whether a name read from a local file takes part (xattrs.c rsync_xal_get).

    ``am_root``: 1 root, 0 not root, -1 fake super; ``level`` the count of
    ``-X``. A sender skips ``system.*``, a non-root receiver everything
    outside ``user.*``; ``user.rsync.%*`` needs ``-XX`` to be sent, and the
    fake-super ``%stat``/``%aacl``/``%dacl`` are never compared under fake super.
    ``excluded`` is given when xattr filter rules were seen (``saw_xattr_filter``):
    then it alone decides, instead of the namespace rule.
    """
    if excluded is not None:
        if excluded(name):
            return False
    elif sender or am_root:
        if name.startswith(SYSTEM_PREFIX):
            return False
    elif not name.startswith(USER_PREFIX):
        return False
    if name.startswith(RSYNC_PREFIX + b"%"):
        if sender and level < 2:
            return False
        if am_root < 0 and name[len(RSYNC_PREFIX) + 1 :] in FAKE_SUPER_NAMES:
            return False
    return True


def keep_removable_name(name: bytes, *, am_root: int, excluded: NameExcluded | None = None) -> bool:
    """Whether a receiver may remove a local name the sender does not have (xattrs.c rsync_xal_set)."""
    if excluded is not None:
        if excluded(name):
            return False
    elif am_root <= 0:
        if not name.startswith(USER_PREFIX):
            return False
    elif name.startswith(SYSTEM_PREFIX):
        return False
    return not (am_root < 0 and name == RSYNC_PREFIX + b"%stat")


def wire_name_out(name: bytes, *, am_root: int) -> bytes:
    """The name a sender puts on the wire: fake super strips ``user.rsync.`` (xattrs.c send_xattr)."""
    if am_root < 0 and name.startswith(RSYNC_PREFIX) and name[len(RSYNC_PREFIX) : len(RSYNC_PREFIX) + 1] != b"%":
        return name[len(RSYNC_PREFIX) :]
    return name


def wire_name_in(name: bytes, *, am_root: int, level: int, excluded: NameExcluded | None = None) -> bytes | None:
    """The name a receiver keeps for a received one, or None to drop it (xattrs.c receive_xattr).

    Names ``excluded`` by xattr filter rules are dropped. Non-root drops names
    outside ``user.*`` (with xattr filter rules, or fake super, it keeps them
    as ``user.rsync.<name>``); ``user.rsync.%*`` names are dropped without ``-XX``.
    """
    if excluded is not None and excluded(name):
        return None
    if am_root <= 0 and not name.startswith(USER_PREFIX):
        if am_root == 0 and excluded is None:
            return None
        name = RSYNC_PREFIX + name
    if level < 2 and name.startswith(RSYNC_PREFIX + b"%"):
        return None
    return name


# ---------------------------------------------------------------- the file-list block


def _key(items: tuple[XattrItem, ...]) -> tuple:
    return tuple((i.name, i.size, i.digest if i.abbreviated else i.value) for i in items)


class XattrEncoder:
    """The sender's side of the set cache (xattrs.c send_xattr, find_matching_xattr)."""

    def __init__(self, *, am_root: int = 1) -> None:
        self.am_root = am_root
        self.sets: list[XattrSet] = []
        self._index: dict[tuple, int] = {}

    def encode(self, items: tuple[XattrItem, ...]) -> tuple[bytes, XattrSet]:
        """Wire block for one entry's ``items`` (sorted, numbered), and the cached set it names.

        A set equal to one sent before goes as ``varint ndx+1``; a new one in
        full (values over 32 bytes as their md5) and is cached.
        """
        key = _key(items)
        ndx = self._index.get(key)
        if ndx is not None:
            return encode_varint(ndx + 1), self.sets[ndx]
        out = [b"\x00", encode_varint(len(items))]
        for item in items:
            name = wire_name_out(item.name, am_root=self.am_root) + b"\x00"
            out += [encode_varint(len(name)), encode_varint(item.size), name]
            out.append(item.digest if item.abbreviated else item.value)
        xset = XattrSet(len(self.sets), items)
        self._index[key] = xset.ndx
        self.sets.append(xset)
        return b"".join(out), xset


class XattrDecoder:
    """The receiver's side of the set cache (xattrs.c receive_xattr).

    ``am_root`` and ``level`` decide which received names are kept and how
    (see :func:`wire_name_in`); numbers stay those of the wire order.
    """

    def __init__(self, *, am_root: int = 1, level: int = 1, excluded: NameExcluded | None = None) -> None:
        self.am_root, self.level, self.excluded = am_root, level, excluded
        self.sets: list[XattrSet] = []

    def decode(self, read: Read) -> XattrSet:
        """Read one entry's block; returns the (possibly earlier) set it names.

        Raises:
            ProtocolError: an index past the cache, a count, name or value
                length over rsync's bounds, a name without its NUL.
        """
        ndx = decode_varint(read)
        if ndx < 0 or ndx > len(self.sets):
            raise ProtocolError(f"xattr set index {ndx} outside the {len(self.sets)} sets received")
        if ndx:
            return self.sets[ndx - 1]
        count = decode_varint(read)
        if not 0 <= count <= MAX_WIRE_XATTR_COUNT:
            raise ProtocolError(f"xattr count {count} outside 0..{MAX_WIRE_XATTR_COUNT}")
        items, total = [], 0
        for num in range(1, count + 1):
            item, size = self._read_item(read, num)
            total += size
            if total > MAX_XATTR_LIST_BYTES:
                raise ProtocolError(f"xattr list over {MAX_XATTR_LIST_BYTES} bytes")
            if item is not None:
                items.append(item)
        items.sort(key=lambda i: i.name)
        xset = XattrSet(len(self.sets), tuple(items))
        self.sets.append(xset)
        return xset

    def _read_item(self, read: Read, num: int) -> tuple[XattrItem | None, int]:
        name_len, size = decode_varint(read), decode_varint(read)
        if not 0 < name_len <= MAX_WIRE_XATTR_NAMELEN:
            raise ProtocolError(f"xattr name of {name_len} bytes outside 1..{MAX_WIRE_XATTR_NAMELEN}")
        if not 0 <= size <= MAX_XATTR_VALUE_BYTES:
            raise ProtocolError(f"xattr value of {size} bytes outside 0..{MAX_XATTR_VALUE_BYTES}")
        raw = read(name_len)
        if raw[-1:] != b"\x00" or b"\x00" in raw[:-1]:
            raise ProtocolError("Invalid xattr name received (missing trailing \\0)")
        data = read(DIGEST_LEN if size > MAX_FULL_DATUM else size)
        name = wire_name_in(raw[:-1], am_root=self.am_root, level=self.level, excluded=self.excluded)
        if name is None:
            return None, name_len + size
        if size > MAX_FULL_DATUM:
            return XattrItem(name, size, None, data, num), name_len + size
        return XattrItem(name, size, data, None, num), name_len + size


# ---------------------------------------------------------------- comparing


def xattr_diff(items: tuple[XattrItem, ...], local: dict[bytes, bytes] | None) -> tuple[bool, list[XattrItem]]:
    """Compare a sender's set with a local file's attributes (xattrs.c xattr_diff, find_all).

    ``local`` is None when there is no local file. Returns (differ, the
    abbreviated items whose local value is missing or different).
    """
    local = local or {}
    differ = len(items) != len(local)
    needed = []
    for item in items:
        if item.matches(local.get(item.name)):
            continue
        differ = True
        if item.abbreviated:
            needed.append(item)
    return differ, needed


# ---------------------------------------------------------------- the transfer-phase exchange


def encode_xattr_request(nums: list[int]) -> bytes:
    """Generator -> sender: the numbers of the values wanted in full, as deltas, then ``00``."""
    out, prior = [], 0
    for num in nums:
        out.append(encode_varint(num - prior))
        prior = num
    out.append(b"\x00")
    return b"".join(out)


def _read_nums(read: Read, xset: XattrSet, *, with_values: bool) -> list[tuple[XattrItem, bytes | None]]:
    got: list[tuple[XattrItem, bytes | None]] = []
    by_num = {item.num: item for item in xset.items}
    num = 0
    for _ in range(len(xset.items) + 1):
        delta = decode_varint(read)
        if delta == 0:
            return got
        num += delta
        item = by_num.get(num)
        if item is None or not item.abbreviated:
            raise ProtocolError(f"could not find abbreviated xattr #{num} in a set of {len(xset.items)}")
        value = None
        if with_values:
            size = decode_varint(read)
            if not 0 <= size <= MAX_XATTR_VALUE_BYTES:
                raise ProtocolError(f"xattr value of {size} bytes outside 0..{MAX_XATTR_VALUE_BYTES}")
            value = read(size)
        got.append((item, value))
    raise ProtocolError(f"xattr request of more than the {len(xset.items)} items of its set")


def decode_xattr_request(read: Read, xset: XattrSet) -> list[XattrItem]:
    """Sender: read the generator's request for ``xset``; the abbreviated items wanted.

    Raises:
        ProtocolError: a number naming no abbreviated item, or more numbers than items.
    """
    return [item for item, _ in _read_nums(read, xset, with_values=False)]


def encode_xattr_values(pairs: list[tuple[int, bytes]]) -> bytes:
    """Sender -> receiver: ``(num, value)`` pairs as ``delta, length, value``, then ``00``."""
    out, prior = [], 0
    for num, value in pairs:
        out += [encode_varint(num - prior), encode_varint(len(value)), value]
        prior = num
    out.append(b"\x00")
    return b"".join(out)


def decode_xattr_values(read: Read, xset: XattrSet) -> dict[int, bytes]:
    """Receiver: read the values the sender sent for ``xset``; num -> value.

    Raises:
        ProtocolError: a number naming no abbreviated item, a length over the
            bound, or more values than items.
    """
    return {item.num: value for item, value in _read_nums(read, xset, with_values=True)}
