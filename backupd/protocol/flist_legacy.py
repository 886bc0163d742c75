"""File-list entries of protocols 27-29: byte flags, int32 and longint fields.

The entry order is that of protocols 30-32 (flist.py), with these forms:
flags are one byte, at 28-29 a second one when XMIT_EXTENDED_FLAGS is set
(27: one byte only); a long name's length, the mtime (seconds, unsigned),
uid, gid, the rdev major/minor (a one-byte minor with
XMIT_RDEV_MINOR_8_pre30; 27: one int32 rdev) and a symlink's length are
int32; the file length is a longint. No user or group names ride in
entries (the id lists follow the list), no nanoseconds. Hard links travel
as dev/inode longints after the symlink (28-29: only XMIT_HLINKED entries,
dev left out with XMIT_SAME_DEV_pre30; 27: every regular file, dev always);
the sent dev is the sender's plus one. The list ends with one 00 byte; the
id lists (int32 ids) and an int32 io_error follow it.
Source: rsync flist.c send_file_entry()/recv_file_entry()/recv_file_list(),
uidlist.c send_id_list(), io.c write_longint(); rsync-protocol-a.md §8.12.
"""

from __future__ import annotations

import os
import stat

from backupd.errors import ProtocolError
from backupd.protocol.constants import MAX_PATH_LEN, XmitFlags
from backupd.protocol.flist import MAX_FLIST_ENTRIES, FileEntry, FlistDecoder, FlistEncoder, FlistOptions
from backupd.protocol.wire import Read, decode_int32, decode_longint, encode_int32, encode_longint

_TOP_DIR = int(XmitFlags.TOP_DIR)
_SAME_MODE = int(XmitFlags.SAME_MODE)
_EXTENDED_FLAGS = int(XmitFlags.EXTENDED_FLAGS)
_SAME_RDEV_pre28 = int(XmitFlags.SAME_RDEV_pre28)
_SAME_UID = int(XmitFlags.SAME_UID)
_SAME_GID = int(XmitFlags.SAME_GID)
_SAME_NAME = int(XmitFlags.SAME_NAME)
_LONG_NAME = int(XmitFlags.LONG_NAME)
_SAME_TIME = int(XmitFlags.SAME_TIME)
_SAME_RDEV_MAJOR = int(XmitFlags.SAME_RDEV_MAJOR)
_HLINKED = int(XmitFlags.HLINKED)
_SAME_DEV_pre30 = int(XmitFlags.SAME_DEV_pre30)
_RDEV_MINOR_8_pre30 = int(XmitFlags.RDEV_MINOR_8_pre30)
_VALID_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


def encode_id_list_legacy(names: dict[int, bytes]) -> bytes:
    """One id list of protocols < 30: (int32 id, byte len, name)*, int32 0 (uidlist.c send_id_list)."""
    out = [encode_int32(_s32(i)) + bytes([len(n[:255])]) + n[:255] for i, n in names.items() if i and n]
    return b"".join(out) + encode_int32(0)


class LegacyFlistDecoder(FlistDecoder):
    """Reads a protocol 27-29 file list (flist.c recv_file_list/recv_file_entry).

    ``wire_entries``, ``read_id_lists`` and ``io_error`` as in FlistDecoder;
    after ``read_id_lists`` the int32 io_error has been read too and
    hard-link groups of one member are dissolved (hlink.c match_hard_links).
    ``hlink_group`` of a member is the wire index of the first entry with
    its dev/inode pair.
    """

    def __init__(self, opts: FlistOptions) -> None:
        super().__init__(opts)
        self._dev = 0
        self._rdev = 0
        self._groups: dict[tuple[int, int], int] = {}
        self._members: dict[int, int] = {}
        self.dev_ino: dict[int, tuple[int, int]] = {}  # wire ndx -> (dev + 1, inode) as sent

    def read_entry(self, read: Read) -> FileEntry | None:
        """Read one entry, or the 00 end byte (returns None).

        Raises:
            ProtocolError: a bad name, length, mode or size.
        """
        xflags = read(1)[0]
        if xflags == 0:
            return None
        if self.opts.protocol >= 28 and xflags & _EXTENDED_FLAGS:
            xflags |= read(1)[0] << 8
        if self.entries_read >= MAX_FLIST_ENTRIES:
            raise ProtocolError(f"file list over {MAX_FLIST_ENTRIES} entries")
        entry = self._read_legacy(read, xflags)
        self.entries_read += 1
        self.wire_entries.append(entry)
        return entry

    def decode_at(self, data: bytes, pos: int):
        """Not for protocols 27-29: their entries are read field by field (:meth:`read_entry`).

        Raises:
            NotImplementedError: always (the buffer form is FlistDecoder's, protocol 30+).
        """
        raise NotImplementedError("protocol 27-29 file-list entries are read with read_entry")

    def _read_legacy(self, read: Read, xflags: int) -> FileEntry:
        o, prev = self.opts, self._prev
        l1 = read(1)[0] if xflags & _SAME_NAME else 0
        l2 = decode_int32(read) if xflags & _LONG_NAME else read(1)[0]
        if l1 > len(prev.name) or l2 < 0 or l1 + l2 >= MAX_PATH_LEN:
            raise ProtocolError(f"file-list name of {l1}+{l2} bytes (previous name {len(prev.name)} bytes)")
        name = prev.name[:l1] + read(l2)
        prev.name = name
        entry = FileEntry(name=name, mode=0)
        entry.size = decode_longint(read)
        if entry.size < 0:
            raise ProtocolError(f"{name!r}: negative file length {entry.size}")
        if not xflags & _SAME_TIME:
            prev.mtime = decode_int32(read) & 0xFFFFFFFF  # read_uint
        entry.mtime = prev.mtime
        if not xflags & _SAME_MODE:
            prev.mode = decode_int32(read) & 0xFFFFFFFF
        entry.mode = prev.mode
        if entry.mode > 0o177777 or (entry.mode != 0 and stat.S_IFMT(entry.mode) not in _VALID_TYPES):
            raise ProtocolError(f"{name!r}: invalid file mode {entry.mode:#o}")
        if entry.is_dir:
            entry.xflags = xflags & _TOP_DIR
        if o.preserve_uid:
            if not xflags & _SAME_UID:
                prev.uid = decode_int32(read) & 0xFFFFFFFF
            entry.uid = prev.uid
        if o.preserve_gid:
            if not xflags & _SAME_GID:
                prev.gid = decode_int32(read) & 0xFFFFFFFF
            entry.gid = prev.gid
        self._read_rdev(read, xflags, entry)
        if o.preserve_links and entry.is_link:
            n = decode_int32(read)
            if not 0 < n < MAX_PATH_LEN:
                raise ProtocolError(f"{entry.name!r}: symlink target of {n} bytes")
            entry.link_target = read(n)
        if o.preserve_hard_links and (xflags & _HLINKED or (o.protocol < 28 and entry.is_reg)):
            self._read_dev_ino(read, xflags, entry)
        if o.csum_len and (entry.is_reg or o.protocol < 28):
            checksum = read(o.csum_len)
            entry.checksum = checksum if entry.is_reg else None
        return entry

    def _read_rdev(self, read: Read, xflags: int, entry: FileEntry) -> None:
        o, prev = self.opts, self._prev
        if not ((o.preserve_devices and entry.is_device) or (o.preserve_specials and entry.is_special)):
            if o.protocol < 28:
                self._rdev = 0
            return
        if o.protocol < 28:
            if not xflags & _SAME_RDEV_pre28:
                self._rdev = decode_int32(read) & 0xFFFFFFFF
            major, minor = os.major(self._rdev), os.minor(self._rdev)
        else:
            if not xflags & _SAME_RDEV_MAJOR:
                prev.rdev_major = decode_int32(read) & 0xFFFFFFFF
            major = prev.rdev_major
            minor = read(1)[0] if xflags & _RDEV_MINOR_8_pre30 else decode_int32(read) & 0xFFFFFFFF
        if entry.is_device:
            if major > 0x7FFFFFFF or minor > 0x7FFFFFFF:  # no dev_t holds them (os.makedev refuses)
                raise ProtocolError(f"{entry.name!r}: device number {major}:{minor} out of range")
            entry.rdev_major, entry.rdev_minor = major, minor
        entry.size = 0  # recv_file_entry: a device's or special's length is 0

    def _read_dev_ino(self, read: Read, xflags: int, entry: FileEntry) -> None:
        if self.opts.protocol < 28 or not xflags & _SAME_DEV_pre30:
            self._dev = decode_longint(read)
        ino = decode_longint(read)
        ndx = self.ndx_start + len(self.wire_entries)
        self.dev_ino[ndx] = (self._dev, ino)
        if entry.is_dir:
            return
        group = self._groups.setdefault((self._dev, ino), ndx)
        entry.hlink_group, entry.hlink_first = group, group == ndx
        self._members[group] = self._members.get(group, 0) + 1

    def read_id_lists(self, read: Read) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """The uid and gid lists (int32 ids), then the int32 io_error (flist.c recv_file_list).

        Returns (uid -> name, gid -> name).
        """
        o = self.opts
        users = self._read_legacy_ids(read) if o.preserve_uid and not o.numeric_ids else {}
        groups = self._read_legacy_ids(read) if o.preserve_gid and not o.numeric_ids else {}
        self.io_error = decode_int32(read) & 0xFFFFFFFF
        for entry in self.wire_entries:
            if entry.hlink_group is not None and self._members.get(entry.hlink_group, 0) < 2:
                entry.hlink_group, entry.hlink_first = None, False
        return users, groups

    @staticmethod
    def _read_legacy_ids(read: Read) -> dict[int, bytes]:
        names: dict[int, bytes] = {}
        for _ in range(1_000_000):
            ident = decode_int32(read) & 0xFFFFFFFF
            if ident == 0:
                return names
            names[ident] = read(read(1)[0])
        raise ProtocolError("id list over 1000000 entries")


class LegacyFlistEncoder(FlistEncoder):
    """Writes a protocol 27-29 file list (flist.c send_file_entry); the sender's side.

    Hard links: each entry's ``hlink_group`` stands in for its inode (dev
    1); at 27 a regular file outside any group gets an inode of its own.
    ``dev_ino(entry) -> (dev + 1, inode)``, when given, supplies the pair
    to send instead (a replay of captured bytes).
    """

    def __init__(self, opts: FlistOptions, dev_ino=None) -> None:
        super().__init__(opts)
        self._rdev = 0  # rsync's statics start at 0
        self._dev = -1
        self._dev_ino = dev_ino

    def encode_entry(self, entry: FileEntry) -> bytes:
        """Wire bytes of one entry; advances the "same as previous" state."""
        o, prev = self.opts, self._prev
        xflags = self._legacy_flags(entry)
        name = entry.name
        l1 = 0
        limit = min(len(name), len(prev.name), 255)
        while l1 < limit and name[l1] == prev.name[l1]:
            l1 += 1
        suffix = name[l1:]
        xflags |= (_SAME_NAME if l1 else 0) | (_LONG_NAME if len(suffix) > 255 else 0)
        xflags = self._final_flags(xflags, entry)
        two_bytes = o.protocol >= 28 and xflags & _EXTENDED_FLAGS  # 27: that bit is SAME_RDEV_pre28
        out = [bytes([xflags & 0xFF, xflags >> 8]) if two_bytes else bytes([xflags])]
        if l1:
            out.append(bytes([l1]))
        out.append(encode_int32(len(suffix)) if xflags & _LONG_NAME else bytes([len(suffix)]))
        out += [suffix, encode_longint(entry.size)]
        if not xflags & _SAME_TIME:
            out.append(encode_int32(_s32(entry.mtime)))
        if not xflags & _SAME_MODE:
            out.append(encode_int32(_s32(entry.mode)))
        if o.preserve_uid and not xflags & _SAME_UID:
            out.append(encode_int32(_s32(entry.uid or 0)))
        if o.preserve_gid and not xflags & _SAME_GID:
            out.append(encode_int32(_s32(entry.gid or 0)))
        out.append(self._rdev_bytes(entry, xflags))
        if o.preserve_links and entry.is_link:
            target = entry.link_target or b""
            out.append(encode_int32(len(target)) + target)
        if (pair := self._pair(entry)) is not None:
            if not xflags & _SAME_DEV_pre30:
                out.append(encode_longint(pair[0]))
            out.append(encode_longint(pair[1]))
        if o.csum_len and (entry.is_reg or o.protocol < 28):
            sum_ = entry.checksum if entry.is_reg and entry.checksum else b""
            out.append(sum_[: o.csum_len].ljust(o.csum_len, b"\0"))
        self._remember(entry)
        return b"".join(out)

    def _pair(self, entry: FileEntry) -> tuple[int, int] | None:
        """(dev + 1, inode) to send for ``entry``, or None (flist.c make_file: tmp_dev)."""
        o = self.opts
        if not o.preserve_hard_links or entry.is_dir or (o.protocol < 28 and not entry.is_reg):
            return None
        if o.protocol >= 28 and entry.hlink_group is None:
            return None
        if self._dev_ino is not None:
            return self._dev_ino(entry)
        if entry.hlink_group is not None:
            return 1, entry.hlink_group + 1
        return 1, (1 << 32) + self.entries_written  # 27: never another entry's inode

    def _legacy_flags(self, entry: FileEntry) -> int:
        o, prev = self.opts, self._prev
        xflags = entry.xflags & _TOP_DIR if entry.is_dir and not entry.is_implied_dir else 0
        if entry.mode == prev.mode:
            xflags |= _SAME_MODE
        if (o.preserve_devices and entry.is_device) or (o.preserve_specials and entry.is_special):
            major, minor = (entry.rdev_major, entry.rdev_minor) if entry.is_device else (prev.rdev_major, 0)
            if o.protocol < 28:
                rdev = os.makedev(major, minor) if entry.is_device else self._rdev
                xflags |= _SAME_RDEV_pre28 if rdev == self._rdev else 0
                self._rdev = rdev
            else:
                xflags |= _SAME_RDEV_MAJOR if major == prev.rdev_major else 0
                xflags |= _RDEV_MINOR_8_pre30 if minor <= 0xFF else 0
        elif o.protocol < 28:
            self._rdev = 0
        if not o.preserve_uid or (entry.uid == prev.uid and prev.name):
            xflags |= _SAME_UID
        if not o.preserve_gid or (entry.gid == prev.gid and prev.name):
            xflags |= _SAME_GID
        if entry.mtime == prev.mtime:
            xflags |= _SAME_TIME
        if (pair := self._pair(entry)) is not None:
            xflags |= _HLINKED if o.protocol >= 28 else 0
            if o.protocol >= 28 and self._dev == pair[0]:
                xflags |= _SAME_DEV_pre30
            self._dev = pair[0]
        return xflags

    def _final_flags(self, xflags: int, entry: FileEntry) -> int:
        """Never a 0 first byte (the end marker): TOP_DIR on a non-dir, EXTENDED_FLAGS, or at 27 LONG_NAME."""
        if self.opts.protocol >= 28:
            if not xflags and not entry.is_dir:
                xflags |= _TOP_DIR
            if xflags & 0xFF00 or not xflags:
                xflags |= _EXTENDED_FLAGS
            return xflags
        if not xflags & 0xFF:
            xflags |= _LONG_NAME if entry.is_dir else _TOP_DIR
        return xflags & 0xFF

    def _rdev_bytes(self, entry: FileEntry, xflags: int) -> bytes:
        o = self.opts
        if not ((o.preserve_devices and entry.is_device) or (o.preserve_specials and entry.is_special)):
            return b""
        if o.protocol < 28:
            return b"" if xflags & _SAME_RDEV_pre28 else encode_int32(_s32(self._rdev))
        out = b""
        major = entry.rdev_major if entry.is_device else self._prev.rdev_major
        minor = entry.rdev_minor if entry.is_device else 0
        if not xflags & _SAME_RDEV_MAJOR:
            out += encode_int32(_s32(major))
        return out + (bytes([minor]) if xflags & _RDEV_MINOR_8_pre30 else encode_int32(_s32(minor)))

    @staticmethod
    def encode_end(io_error: int = 0) -> bytes:
        """End-of-list marker of protocols < 30: one 00 byte (the io_error follows the id lists)."""
        return b"\x00"

    def encode_id_lists(self, users: dict[int, bytes], groups: dict[int, bytes]) -> bytes:
        """uid then gid lists with int32 ids (no id-0 names); the caller appends the int32 io_error."""
        o = self.opts
        out = b""
        if o.preserve_uid and not o.numeric_ids:
            out += encode_id_list_legacy(users)
        if o.preserve_gid and not o.numeric_ids:
            out += encode_id_list_legacy(groups)
        return out


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def new_flist_decoder(opts: FlistOptions) -> FlistDecoder:
    """The file-list reader for ``opts.protocol``: varint (30-32) or legacy (27-29)."""
    return LegacyFlistDecoder(opts) if opts.protocol < 30 else FlistDecoder(opts)


def new_flist_encoder(opts: FlistOptions) -> FlistEncoder:
    """The file-list writer for ``opts.protocol``: varint (30-32) or legacy (27-29)."""
    return LegacyFlistEncoder(opts) if opts.protocol < 30 else FlistEncoder(opts)
