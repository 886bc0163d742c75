"""File list: FileEntry, the entry codec (XMIT_* flags), sort order, id lists.

Source: rsync flist.c send_file_entry()/recv_file_entry(), flist.c f_name_cmp(),
uidlist.c send_id_lists()/recv_id_list(), protocols 30-32 with
CF_VARINT_FLIST_FLAGS; rsync-protocol-a.md §8. Protocols 27-29: flist_legacy.py
(same entries and state, other field forms; the sort order below 29 is
:func:`legacy_sort_key`).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from backupd.errors import ProtocolError
from backupd.protocol.constants import MAX_PATH_LEN, XmitFlags
from backupd.protocol.wire import (
    Read,
    Truncated,
    decode_varint,
    encode_int32,
    encode_varint,
    encode_varlong,
    varint_at,
    varlong_at,
)
from backupd.protocol.xattrs import XattrSet

MAX_FLIST_ENTRIES = 50_000_000
# plain ints: IntFlag arithmetic costs a microsecond per operation on this hot path
_EXTENDED_FLAGS = int(XmitFlags.EXTENDED_FLAGS)
_GROUP_NAME_FOLLOWS = int(XmitFlags.GROUP_NAME_FOLLOWS)
_HLINKED = int(XmitFlags.HLINKED)
_HLINK_FIRST = int(XmitFlags.HLINK_FIRST)
_LONG_NAME = int(XmitFlags.LONG_NAME)
_MOD_NSEC = int(XmitFlags.MOD_NSEC)
_NO_CONTENT_DIR = int(XmitFlags.NO_CONTENT_DIR)
_SAME_GID = int(XmitFlags.SAME_GID)
_SAME_MODE = int(XmitFlags.SAME_MODE)
_SAME_NAME = int(XmitFlags.SAME_NAME)
_SAME_RDEV_MAJOR = int(XmitFlags.SAME_RDEV_MAJOR)
_SAME_TIME = int(XmitFlags.SAME_TIME)
_SAME_UID = int(XmitFlags.SAME_UID)
_TOP_DIR = int(XmitFlags.TOP_DIR)
_USER_NAME_FOLLOWS = int(XmitFlags.USER_NAME_FOLLOWS)
# what an abbreviated hard-link member takes from its first (flist.c recv_file_entry, XMIT_HLINKED)
_HLINK_COPIED = ("size", "mtime", "mtime_nsec", "mode", "uid", "gid", "rdev_major", "rdev_minor",
                 "link_target", "checksum", "user_name", "group_name")
_VALID_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


@dataclass(slots=True)
class FileEntry:
    """One file-list entry. ``name`` is the wire path (``.`` for the transfer root).

    ``mtime`` in seconds since the epoch, ``mtime_nsec`` 0..999999999, ``size``
    in bytes; ``uid``/``gid`` None when not preserved. ``xflags`` keeps the
    TOP_DIR / NO_CONTENT_DIR bits as sent. ``hlink_group`` is the wire index of
    the first member of a hard-link group (-H), or None. ``xattrs`` is the
    entry's set of extended attributes from the file list (-X), or None.
    """

    name: bytes
    mode: int
    size: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    uid: int | None = None
    gid: int | None = None
    user_name: bytes | None = None
    group_name: bytes | None = None
    rdev_major: int = 0
    rdev_minor: int = 0
    link_target: bytes | None = None
    checksum: bytes | None = None
    xflags: int = 0
    hlink_group: int | None = None
    hlink_first: bool = False
    xattrs: XattrSet | None = None
    acls: tuple | None = None  # (access RsyncAcl, default RsyncAcl or None) from the file list (-A)

    @property
    def is_dir(self) -> bool:
        """A directory entry."""
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        """A regular file entry."""
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        """A symlink entry."""
        return stat.S_ISLNK(self.mode)

    @property
    def is_device(self) -> bool:
        """A block or character device."""
        return stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode)

    @property
    def is_special(self) -> bool:
        """A fifo or socket."""
        return stat.S_ISFIFO(self.mode) or stat.S_ISSOCK(self.mode)

    @property
    def is_content_dir(self) -> bool:
        """A directory whose contents are part of the transfer (swept by --delete)."""
        return self.is_dir and not self.xflags & _NO_CONTENT_DIR

    @property
    def is_implied_dir(self) -> bool:
        """A parent dir sent only for ``-R`` (protocol 30+: TOP_DIR with NO_CONTENT_DIR, rsync FLAG_IMPLIED_DIR)."""
        return self.is_dir and bool(self.xflags & _NO_CONTENT_DIR) and bool(self.xflags & _TOP_DIR)

    @property
    def mtime_ns(self) -> int:
        """mtime in nanoseconds."""
        return self.mtime * 1_000_000_000 + self.mtime_nsec


@dataclass(frozen=True)
class FlistOptions:
    """What decides the fields of an entry on the wire (both directions agree)."""

    protocol: int = 31
    preserve_uid: bool = False
    preserve_gid: bool = False
    preserve_links: bool = False
    preserve_devices: bool = False
    preserve_specials: bool = False
    preserve_hard_links: bool = False
    csum_len: int = 0
    inc_recurse: bool = False
    numeric_ids: bool = False
    id0_names: bool = False
    preserve_acls: bool = False  # -A: the id lists are sent even without -o/-g


@dataclass
class _Prev:
    name: bytes = b""
    mode: int = 0
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    rdev_major: int = 0
    user_names: dict[int, bytes] = field(default_factory=dict)
    group_names: dict[int, bytes] = field(default_factory=dict)


class FlistDecoder:
    """Reads file-list entries; keeps the "same as previous" state across lists.

    ``wire_entries`` collects every entry read, unless ``keep_entries`` is
    turned off (an incremental receiver holds its lists itself and frees
    them); a hard-link reference is resolved through an index of the
    entries read so far, kept only with -H.
    """

    def __init__(self, opts: FlistOptions) -> None:
        self.opts = opts
        self._prev = _Prev()
        self.entries_read = 0
        self.keep_entries = True
        self.wire_entries: list[FileEntry] = []
        self.ndx_start = 1 if opts.inc_recurse else 0
        self._list_count = 0
        self._by_wire_ndx: dict[int, FileEntry] = {}

    def next_list(self) -> None:
        """Start an incremental sub-list: its indices follow the previous list plus one."""
        self.ndx_start += self._list_count + 1
        self._list_count = 0

    def read_entry(self, read: Read) -> FileEntry | None:
        """Read one entry, or the end marker (returns None; see ``io_error``).

        The stream form of :meth:`decode_at`: ``read`` is asked for exactly
        the bytes the entry needs, one field group at a time.

        Raises:
            ProtocolError: as decode_at.
        """
        data = read(1)
        while True:
            try:
                return self.decode_at(data, 0)[0]
            except Truncated as short:
                data += read(short.beyond(len(data)))

    io_error: int = 0

    def decode_at(self, data: bytes, pos: int) -> tuple[FileEntry | None, int]:
        """Decode the entry (or end marker, as None) at ``data[pos:]``; returns it and the position after it.

        Source: rsync flist.c recv_file_entry, protocols 30-32 (varint
        flags, varlong size and mtime). The receiver decodes from the bytes
        it already holds, without a ``read`` call per field (the common
        one-byte varint and short varlongs inline: 0.2 us of 2 per entry); the "same as previous"
        state (name, mtime, mode, ids, rdev major) changes only when the
        whole entry was there.

        Raises:
            Truncated: ``data`` ends inside the entry; nothing was changed.
            ProtocolError: a bad name (``..``, absolute, too long), a bad mode,
                an out-of-range value, or a hard-link reference to nothing.
        """
        n = len(data)
        if pos >= n:
            raise Truncated(pos + 1)
        xflags = data[pos]
        if xflags < 0x80:  # the one-byte varint of most entries, inline
            pos += 1
        else:
            xflags, pos = varint_at(data, pos)
        if xflags == 0:
            self.io_error, pos = varint_at(data, pos)
            return None, pos
        if self.entries_read >= MAX_FLIST_ENTRIES:
            raise ProtocolError(f"file list over {MAX_FLIST_ENTRIES} entries")
        xflags &= 0xFFFFFFFF
        o, prev = self.opts, self._prev
        # the name: l1 bytes of the previous one, then l2 new bytes
        if xflags & _SAME_NAME:
            if pos >= n:
                raise Truncated(pos + 1)
            l1, pos = data[pos], pos + 1
        else:
            l1 = 0
        if xflags & _LONG_NAME:
            l2, pos = varint_at(data, pos)
        elif pos >= n:
            raise Truncated(pos + 1)
        else:
            l2, pos = data[pos], pos + 1
        if l1 > len(prev.name) or l2 < 0 or l1 + l2 >= MAX_PATH_LEN:
            raise ProtocolError(f"file-list name of {l1}+{l2} bytes (previous name {len(prev.name)} bytes)")
        end = pos + l2
        if end > n:
            raise Truncated(end)
        name = prev.name[:l1] + data[pos:end]
        pos = end
        ndx = self.ndx_start + self._list_count
        mtime, mode, uid, gid, rdev_major = prev.mtime, prev.mode, prev.uid, prev.gid, prev.rdev_major
        group = src = None
        if o.preserve_hard_links and xflags & _HLINKED:
            if xflags & _HLINK_FIRST:
                group = ndx
            else:
                first, pos = varint_at(data, pos)
                src = self._by_wire_ndx.get(first)
                if src is None or src.hlink_group is None:
                    raise ProtocolError(f"hard-link reference {first} names no hard-linked entry read so far")
                group = src.hlink_group
                if first < self.ndx_start:  # in an earlier list: the fields follow in full
                    src = None
                xflags &= ~(_TOP_DIR | _NO_CONTENT_DIR)
        if src is not None:  # abbreviated: every field as its first member's
            entry = FileEntry(name, src.mode)
            for attr in _HLINK_COPIED:
                setattr(entry, attr, getattr(src, attr))
            mode, mtime = src.mode, src.mtime
            if o.preserve_uid and src.uid is not None:
                uid = src.uid
            if o.preserve_gid and src.gid is not None:
                gid = src.gid
            if src.is_device:
                rdev_major = src.rdev_major
        else:
            # size: a varlong of at least 3 bytes, inline when its lead byte says no more follow
            if pos + 3 <= n and data[pos] < 0x80:
                size, pos = int.from_bytes(data[pos + 1:pos + 3], "little") | data[pos] << 16, pos + 3
            else:
                size, pos = varlong_at(data, pos, 3)
                if size < 0:
                    raise ProtocolError(f"{name!r}: negative file length {size}")
            if not xflags & _SAME_TIME:
                if pos + 4 <= n and data[pos] < 0x80:
                    mtime, pos = int.from_bytes(data[pos + 1:pos + 4], "little") | data[pos] << 24, pos + 4
                else:
                    mtime, pos = varlong_at(data, pos, 4)
            nsec = 0
            if xflags & _MOD_NSEC:
                nsec, pos = varint_at(data, pos)
                if not 0 <= nsec <= 999_999_999:
                    raise ProtocolError(f"{name!r}: mtime nanoseconds {nsec} out of range")
            if not xflags & _SAME_MODE:
                if pos + 4 > n:
                    raise Truncated(pos + 4)
                mode, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
            ftype = stat.S_IFMT(mode)
            if mode != 0 and ftype not in _VALID_TYPES:  # 0: a missing arg
                raise ProtocolError(f"{name!r}: invalid file mode {mode:#o}")
            # bit 8 of a non-directory is SAME_RDEV_MAJOR, not NO_CONTENT_DIR
            kept = xflags & (_TOP_DIR | _NO_CONTENT_DIR) if ftype == stat.S_IFDIR else 0
            entry = FileEntry(name, mode, size, mtime, nsec, xflags=kept)
            if o.preserve_uid:
                if not xflags & _SAME_UID:
                    uid, pos = varint_at(data, pos)
                    uid &= 0xFFFFFFFF  # uid_t: ids of 2**31 and up
                    if xflags & _USER_NAME_FOLLOWS:
                        prev.user_names[uid], pos = _name_at(data, pos)
                entry.uid, entry.user_name = uid, prev.user_names.get(uid)
            if o.preserve_gid:
                if not xflags & _SAME_GID:
                    gid, pos = varint_at(data, pos)
                    gid &= 0xFFFFFFFF
                    if xflags & _GROUP_NAME_FOLLOWS:
                        prev.group_names[gid], pos = _name_at(data, pos)
                entry.gid, entry.group_name = gid, prev.group_names.get(gid)
            if ftype != stat.S_IFREG or o.csum_len:
                rdev_major, pos = self._rdev_link_sum_at(data, pos, xflags, entry, ftype, rdev_major)
        if pos > n:
            raise Truncated(pos)
        if group is not None:
            entry.hlink_group, entry.hlink_first = group, group == ndx
        if o.preserve_hard_links:
            self._by_wire_ndx[ndx] = entry
        prev.name, prev.mtime, prev.mode, prev.uid, prev.gid, prev.rdev_major = name, mtime, mode, uid, gid, rdev_major
        self._list_count += 1
        self.entries_read += 1
        if self.keep_entries:
            self.wire_entries.append(entry)
        return entry, pos

    def _rdev_link_sum_at(self, data: bytes, pos: int, xflags: int, entry: FileEntry, ftype: int,
                          rdev_major: int) -> tuple[int, int]:
        """Device numbers, symlink target, checksum; returns (rdev major for the next entry, position)."""
        o = self.opts
        device = ftype in (stat.S_IFCHR, stat.S_IFBLK)
        if (o.preserve_devices and device) or (
                o.preserve_specials and ftype in (stat.S_IFIFO, stat.S_IFSOCK) and o.protocol < 31):
            if not xflags & _SAME_RDEV_MAJOR:
                rdev_major, pos = varint_at(data, pos)
            minor, pos = varint_at(data, pos)
            if device:  # a special's is only the historical filler (recv_file_entry)
                entry.rdev_major, entry.rdev_minor = rdev_major, minor
        if o.preserve_links and ftype == stat.S_IFLNK:
            length, pos = varint_at(data, pos)
            if not 0 < length < MAX_PATH_LEN:
                raise ProtocolError(f"{entry.name!r}: symlink target of {length} bytes")
            entry.link_target, pos = data[pos:pos + length], pos + length
        if o.csum_len and ftype == stat.S_IFREG:
            entry.checksum, pos = data[pos:pos + o.csum_len], pos + o.csum_len
        return rdev_major, pos

    def read_id_lists(self, read: Read) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """The uid and gid name lists after a non-incremental list (uidlist.c recv_id_list).

        Returns (uid -> name, gid -> name); also applied to the entries' names.
        """
        o = self.opts
        users = self._read_id_list(read) if (o.preserve_uid or o.preserve_acls) and not o.numeric_ids else {}
        groups = self._read_id_list(read) if (o.preserve_gid or o.preserve_acls) and not o.numeric_ids else {}
        return users, groups

    def _read_id_list(self, read: Read) -> dict[int, bytes]:
        names: dict[int, bytes] = {}
        for _ in range(1_000_000):
            ident = decode_varint(read) & 0xFFFFFFFF
            if ident == 0:
                break
            names[ident] = read(read(1)[0])
        else:
            raise ProtocolError("id list over 1000000 entries")
        if self.opts.id0_names:
            names[0] = read(read(1)[0])
        return names


class FlistEncoder:
    """Writes file-list entries (flist.c send_file_entry); the sender's side."""

    def __init__(self, opts: FlistOptions) -> None:
        self.opts = opts
        self._prev = _Prev()
        self._sent_users: set[int] = set()
        self._sent_groups: set[int] = set()
        self.entries_written = 0
        self.ndx_start = 1 if opts.inc_recurse else 0  # wire ndx of this list's first entry

    def encode_entry(self, entry: FileEntry) -> bytes:
        """Wire bytes of one entry; advances the "same as previous" state."""
        o, prev = self.opts, self._prev
        xflags = self._flags(entry)
        name = entry.name
        l1 = 0
        limit = min(len(name), len(prev.name), 255)
        while l1 < limit and name[l1] == prev.name[l1]:
            l1 += 1
        suffix = name[l1:]
        if l1:
            xflags |= _SAME_NAME
        if len(suffix) > 255:
            xflags |= _LONG_NAME
        user = self._name_follows(entry.uid, entry.user_name, self._sent_users, o.preserve_uid, xflags & _SAME_UID)
        group = self._name_follows(entry.gid, entry.group_name, self._sent_groups, o.preserve_gid, xflags & _SAME_GID)
        xflags |= (_USER_NAME_FOLLOWS if user else 0) | (_GROUP_NAME_FOLLOWS if group else 0)
        out = [encode_varint(xflags or _EXTENDED_FLAGS)]
        if l1:
            out.append(bytes([l1]))
        out.append(encode_varint(len(suffix)) if len(suffix) > 255 else bytes([len(suffix)]))
        out.append(suffix)
        if xflags & _HLINKED and not xflags & _HLINK_FIRST:
            out.append(encode_varint(entry.hlink_group))
            if entry.hlink_group >= self.ndx_start:  # in this list: the rest is the first's
                self._remember(entry)
                return b"".join(out)
        out.append(encode_varlong(entry.size, 3))
        if not xflags & _SAME_TIME:
            out.append(encode_varlong(entry.mtime, 4))
        if xflags & _MOD_NSEC:
            out.append(encode_varint(entry.mtime_nsec))
        if not xflags & _SAME_MODE:
            out.append(encode_int32(_signed32(entry.mode)))
        if o.preserve_uid and not xflags & _SAME_UID:
            out.append(encode_varint(entry.uid or 0))
            if user:
                out.append(bytes([len(user)]) + user)
        if o.preserve_gid and not xflags & _SAME_GID:
            out.append(encode_varint(entry.gid or 0))
            if group:
                out.append(bytes([len(group)]) + group)
        out.append(self._rdev_link_sum(entry, xflags))
        self._remember(entry)
        return b"".join(out)

    def _flags(self, entry: FileEntry) -> int:
        o, prev = self.opts, self._prev
        xflags = 0
        if entry.is_dir:
            xflags |= entry.xflags & (_TOP_DIR | _NO_CONTENT_DIR)
        if entry.mode == prev.mode:
            xflags |= _SAME_MODE
        if o.preserve_devices and entry.is_device and entry.rdev_major == prev.rdev_major:
            xflags |= _SAME_RDEV_MAJOR
        elif o.preserve_specials and entry.is_special and o.protocol < 31:
            xflags |= _SAME_RDEV_MAJOR  # flist.c send_file_entry: a special's rdev is (last major, 0)
        if not o.preserve_uid or (entry.uid == prev.uid and prev.name):
            xflags |= _SAME_UID
        if not o.preserve_gid or (entry.gid == prev.gid and prev.name):
            xflags |= _SAME_GID
        if entry.mtime == prev.mtime:
            xflags |= _SAME_TIME
        if entry.mtime_nsec and o.protocol >= 31:
            xflags |= _MOD_NSEC
        if o.preserve_hard_links and entry.hlink_group is not None and not entry.is_dir:
            xflags |= _HLINKED | (_HLINK_FIRST if entry.hlink_first else 0)
        return xflags

    def claim_name(self, is_user: bool, ident: int, name: bytes | None) -> bytes | None:
        """``name`` if the id's name is still to go inline, else None (uidlist.c add_uid/add_gid).

        One set per kind for the entries and the ACLs: rsync's uidlist/gidlist
        give a name the first time an id is added, from either.
        """
        sent = self._sent_users if is_user else self._sent_groups
        if self.opts.numeric_ids or not self.opts.inc_recurse or ident in sent:
            return None
        sent.add(ident)
        return name[:255] if name else None

    def _name_follows(self, ident, name, sent: set[int], preserve: bool, same: int) -> bytes | None:
        o = self.opts
        if not preserve or same or ident is None or o.numeric_ids or not o.inc_recurse or ident in sent:
            return None
        sent.add(ident)
        return name[:255] if name else None

    def _rdev_link_sum(self, entry: FileEntry, xflags: int) -> bytes:
        o = self.opts
        out = []
        if (o.preserve_devices and entry.is_device) or (o.preserve_specials and entry.is_special and o.protocol < 31):
            if not xflags & _SAME_RDEV_MAJOR:
                out.append(encode_varint(entry.rdev_major))
            out.append(encode_varint(entry.rdev_minor if entry.is_device else 0))
        if o.preserve_links and entry.is_link:
            target = entry.link_target or b""
            out.append(encode_varint(len(target)) + target)
        if o.csum_len and entry.is_reg:
            out.append((entry.checksum or b"\0" * o.csum_len)[: o.csum_len].ljust(o.csum_len, b"\0"))
        return b"".join(out)

    def _remember(self, entry: FileEntry) -> None:
        prev = self._prev
        prev.name, prev.mode, prev.mtime = entry.name, entry.mode, entry.mtime
        if entry.uid is not None:
            prev.uid = entry.uid
        if entry.gid is not None:
            prev.gid = entry.gid
        if entry.is_device:
            prev.rdev_major = entry.rdev_major
        self.entries_written += 1

    @staticmethod
    def encode_end(io_error: int = 0) -> bytes:
        """End-of-list marker: varint 0 then varint io_error."""
        return b"\x00" + encode_varint(io_error)

    def encode_id_lists(self, users: dict[int, bytes], groups: dict[int, bytes]) -> bytes:
        """uid then gid name lists for a non-incremental list (uidlist.c send_id_lists)."""
        o = self.opts
        out = []
        lists = ((o.preserve_uid or o.preserve_acls, users), (o.preserve_gid or o.preserve_acls, groups))
        for preserve, names in lists:
            if not preserve or o.numeric_ids:
                continue
            for ident, name in names.items():
                if ident != 0 and name:
                    out.append(encode_varint(ident) + bytes([len(name[:255])]) + name[:255])
            out.append(b"\x00")
            if o.id0_names:
                zero = names.get(0, b"")[:255]
                out.append(bytes([len(zero)]) + zero)
        return b"".join(out)


def _name_at(data: bytes, pos: int) -> tuple[bytes, int]:
    """A user or group name after its id: one length byte, then the name (uidlist.c recv_user_name)."""
    if pos >= len(data):
        raise Truncated(pos + 1)
    end = pos + 1 + data[pos]
    if end > len(data):
        raise Truncated(end)
    return data[pos + 1:end], end


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def sort_key(name: bytes, is_dir: bool) -> bytes:
    """rsync's file-list order (flist.c f_name_cmp, protocol >= 29), as one bytes key.

    Files before directories at each level, directories compared with a
    trailing ``/``, ``.`` first, bytes unsigned. Each directory component is
    ``01 name /`` and a file's last component ``00 name``: a name holds no
    ``/``, so comparing the concatenation compares component by component
    (a directory sorts before its contents, being a prefix of their keys).
    One memcmp per comparison instead of tuples: the sort of a received file
    list was a quarter of a no-change push.
    """
    if is_dir:
        if name == b".":
            return b""
        if name.endswith(b"/."):  # a directory's trailing "." names the directory itself
            name = name[:-2]
        return b"\x01" + name.replace(b"/", b"/\x01") + b"/"
    head, sep, tail = name.rpartition(b"/")
    if sep:
        return b"\x01" + head.replace(b"/", b"/\x01") + b"/\x00" + tail
    return b"\x00" + name


def legacy_sort_key(name: bytes, is_dir: bool) -> bytes:
    """rsync's file-list order below protocol 29: the whole path, bytes unsigned (strcmp).

    Source: flist.c f_name_cmp() with ``t_path = t_ITEM``: no trailing ``/``
    for directories, no files-first rule, ``.`` not special.
    """
    return name


def sort_key_for(protocol: int):
    """The file-list order of ``protocol``: :func:`sort_key` (29+) or :func:`legacy_sort_key`."""
    return sort_key if protocol >= 29 else legacy_sort_key


def sort_flist(entries: list[FileEntry]) -> list[FileEntry]:
    """Sorted copy with later duplicates removed (a directory wins over a file)."""
    ordered = sorted(entries, key=lambda e: sort_key(e.name, e.is_dir))
    out: list[FileEntry] = []
    for entry in ordered:
        if out and _same_name(out[-1].name, entry.name):
            if entry.is_dir and not out[-1].is_dir:
                out[-1] = entry
            continue
        out.append(entry)
    return out


def _same_name(a: bytes, b: bytes) -> bool:
    return a == b or (a in (b".", b"") and b in (b".", b""))


def plain_wire_name(name: bytes) -> bool:
    """True for a name that :func:`clean_wire_name` leaves as it is and :func:`check_wire_name` accepts.

    The common case, tested without splitting: not empty, no leading ``.``
    or ``/``, no trailing ``/``, no ``//``, no ``/.`` (so no ``.`` or ``..``
    component anywhere) and no NUL. Any other name takes the full rules.
    """
    return (bool(name) and name[0] not in b"./" and name[-1] != 0x2F and b"//" not in name
            and b"/." not in name and b"\0" not in name)


def clean_wire_name(name: bytes) -> bytes:
    """A received name as rsync's receiver cleans it: no ``//``, no ``./``, no trailing ``/``.

    Source: rsync util1.c clean_fname(name, CFN_REFUSE_DOT_DOT_DIRS), called
    by flist.c recv_file_entry() on each name: runs of slashes become one,
    interior ``.`` components go, a trailing slash and a trailing ``/.``
    go, nothing left is ``.``. ``..`` and NUL are left for :func:`check_wire_name` to refuse.
    The decoder's previous-name state keeps the raw name, as rsync's
    ``lastname`` does.
    """
    if not name or b"\0" in name:
        return name
    if (b"//" not in name and b"/./" not in name and not name.startswith(b"./")
            and not name.endswith((b"/", b"/."))):
        return name  # already clean: the common case, without splitting
    return _clean_components(name)


def _clean_components(name: bytes) -> bytes:
    """clean_wire_name's rule on every name (the fast path above skips the clean ones)."""
    anchored = name.startswith(b"/")
    comps = name.split(b"/")
    last = len(comps) - 1
    kept = [c for i, c in enumerate(comps) if c and (c != b"." or i == last)]
    if len(kept) > 1 and kept[-1] == b".":  # "a/." names "a" (CFN_DROP_TRAILING_DOT_DIR)
        kept.pop()
    out = (b"/" if anchored else b"") + b"/".join(kept)
    return out or b"."


def check_wire_name(name: bytes) -> None:
    """Refuse a name that could leave the destination (receiver.c "unsafe pathname").

    Raises:
        ProtocolError: absolute, contains ``..`` or NUL, or is empty.
    """
    if not name or name.startswith(b"/") or b"\0" in name:
        raise ProtocolError(f"unsafe pathname from sender: {name!r}")
    if b".." in name and b".." in name.split(b"/"):
        raise ProtocolError(f"unsafe pathname from sender: {name!r}")
