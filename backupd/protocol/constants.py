"""Wire constants of the rsync protocol, C names minus their prefix.

Source: rsync rsync.h and io.h (3.2.7 and 3.5.0 agree), docs/rsync-protocol-a.md
and -b.md.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

MIN_PROTOCOL = 27
LEGACY_PROTOCOL = 30          # below it: byte flags, int32 fields, int32 ndx, no compat flags
MAX_PROTOCOL = 32
OUR_PROTOCOL = 32

MPLEX_BASE = 7
MAX_FRAME_PAYLOAD = 0xFFFFFF
MAX_MSG_PAYLOAD = 5120        # non-DATA payloads larger than this are fatal (io.c)
MAX_BLOCK_SIZE = 131072       # protocol >= 30
OLD_MAX_BLOCK_SIZE = 1 << 29  # protocols < 30 (rsync.h OLD_MAX_BLOCK_SIZE)
MAX_PATH_LEN = 4096           # MAXPATHLEN
MAX_FILTER_RULE_LEN = 5120
CHUNK_SIZE = 32 * 1024        # literal run size of the C sender
MAX_DEFLATED_CHUNK = 16383

NDX_DONE = -1
NDX_FLIST_EOF = -2
NDX_DEL_STATS = -3
NDX_FLIST_OFFSET = -101


class MsgCode(IntEnum):
    """Multiplexed message codes (rsync.h MSG_*)."""

    DATA = 0
    ERROR_XFER = 1
    INFO = 2
    ERROR = 3
    WARNING = 4
    ERROR_SOCKET = 5
    LOG = 6
    CLIENT = 7
    ERROR_UTF8 = 8
    REDO = 9
    STATS = 10
    IO_ERROR = 22
    IO_TIMEOUT = 33
    NOOP = 42
    ERROR_EXIT = 86
    SUCCESS = 100
    DELETED = 101
    NO_SEND = 102


class XmitFlags(IntFlag):
    """File-list entry flags (rsync.h XMIT_*), protocol >= 30 meanings."""

    TOP_DIR = 1 << 0
    SAME_MODE = 1 << 1
    EXTENDED_FLAGS = 1 << 2
    SAME_UID = 1 << 3
    SAME_GID = 1 << 4
    SAME_NAME = 1 << 5
    LONG_NAME = 1 << 6
    SAME_TIME = 1 << 7
    SAME_RDEV_MAJOR = 1 << 8     # devices
    NO_CONTENT_DIR = 1 << 8      # directories (same bit)
    HLINKED = 1 << 9
    USER_NAME_FOLLOWS = 1 << 10
    GROUP_NAME_FOLLOWS = 1 << 11
    HLINK_FIRST = 1 << 12
    IO_ERROR_ENDLIST = 1 << 12   # legacy end marker (same bit)
    MOD_NSEC = 1 << 13
    SAME_ATIME = 1 << 14
    CRTIME_EQ_MTIME = 1 << 17
    # protocols < 30 (rsync.h *_pre28 / *_pre30): the same bits, other meanings
    SAME_RDEV_pre28 = 1 << 2     # protocol 27: second-byte escape not yet defined
    SAME_DEV_pre30 = 1 << 10     # protocols 28-29, hard-linked entries
    RDEV_MINOR_8_pre30 = 1 << 11  # protocols 28-29, devices: the minor is one byte


class ItemFlags:
    """Per-item flags sent by the generator (rsync.h ITEM_*), as plain ints.

    Not an IntFlag: the generator, the receiver and the transfer log test
    them for every file, and IntFlag arithmetic costs about a microsecond
    an operation.
    """

    REPORT_ATIME = 1 << 0
    REPORT_CHANGE = 1 << 1
    REPORT_SIZE = 1 << 2
    REPORT_TIMEFAIL = 1 << 2
    REPORT_TIME = 1 << 3
    REPORT_PERMS = 1 << 4
    REPORT_OWNER = 1 << 5
    REPORT_GROUP = 1 << 6
    REPORT_ACL = 1 << 7
    REPORT_XATTR = 1 << 8
    REPORT_CRTIME = 1 << 10
    BASIS_TYPE_FOLLOWS = 1 << 11
    XNAME_FOLLOWS = 1 << 12
    IS_NEW = 1 << 13
    LOCAL_CHANGE = 1 << 14
    TRANSFER = 1 << 15
    MISSING_DATA = 1 << 16       # protocols < 29: what the sender assumes without iflags (rsync.c)


SIGNIFICANT_ITEM_FLAGS = ~(
    ItemFlags.BASIS_TYPE_FOLLOWS | ItemFlags.XNAME_FOLLOWS | ItemFlags.LOCAL_CHANGE
) & 0xFFFF


class CompatFlags(IntFlag):
    """Compat flags sent by the server after the arguments (compat.c CF_*)."""

    INC_RECURSE = 1 << 0
    SYMLINK_TIMES = 1 << 1
    SYMLINK_ICONV = 1 << 2
    SAFE_FLIST = 1 << 3
    AVOID_XATTR_OPTIM = 1 << 4
    CHKSUM_SEED_FIX = 1 << 5
    INPLACE_PARTIAL_DIR = 1 << 6
    VARINT_FLIST_FLAGS = 1 << 7
    ID0_NAMES = 1 << 8


class IoError(IntFlag):
    """io_error bits (rsync.h IOERR_*)."""

    GENERAL = 1
    VANISHED = 2
    DEL_LIMIT = 4


FNAMECMP_FNAME = 0x80
FNAMECMP_PARTIAL_DIR = 0x81
FNAMECMP_BACKUP = 0x82
FNAMECMP_FUZZY = 0x83

# rsync clientserver.c SYMLINK_PREFIX: what "munge symlinks" puts before every stored link target.
MUNGE_PREFIX = b"/rsyncd-munged/"
