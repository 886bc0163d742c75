"""Compat flags, checksum and compression negotiation, checksum seed.

Source: rsync compat.c setup_protocol(), negotiate_the_strings();
rsync-protocol-a.md §5. The rule for both lists: take the first name in the
CLIENT's list that we implement (3.2.7's rule; it agrees with every client).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backupd.errors import Unsupported
from backupd.protocol.constants import CompatFlags
from backupd.protocol.flist import FlistOptions
from backupd.protocol.server_args import TransferOptions
from backupd.protocol.sums import MD4_OLD, Checksum

OUR_COMPRESSIONS = ("zstd", "lz4", "zlibx", "zlib", "none")
MAX_NAME_LIST = 255

_CAP_FLAGS = (
    ("f", CompatFlags.SAFE_FLIST),
    ("x", CompatFlags.AVOID_XATTR_OPTIM),
    ("C", CompatFlags.CHKSUM_SEED_FIX),
    ("I", CompatFlags.INPLACE_PARTIAL_DIR),
    ("v", CompatFlags.VARINT_FLIST_FLAGS),
    ("u", CompatFlags.ID0_NAMES),
)


@dataclass(frozen=True)
class SetupPlan:
    """What the server sends after the arguments: flags and which lists."""

    compat_flags: CompatFlags
    send_checksum_list: bool
    send_compress_list: bool


@dataclass(frozen=True)
class Negotiated:
    """The session's agreed algorithms. ``compression`` None means no compression."""

    compat_flags: CompatFlags
    checksum: str
    file_checksum: str
    compression: str | None
    compress_level: int | None
    seed: int


def plan_setup(opts: TransferOptions, *, allow_inc_recurse: bool = False) -> SetupPlan:
    """Compat flags and list choice for ``opts`` (compat.c setup_protocol).

    CF_INC_RECURSE: only where the caller allows it (``allow_inc_recurse``;
    a session allows it for every role), then as rsyncd's
    compat.c set_allow_inc_recurse() decides for a server: the client's
    ``i`` capability (a client with ``--no-inc-recursive``, or one whose
    receiver cannot, such as ``--delete-before``, leaves it out), ``-r``,
    not ``--use-qsort``. The receiver's own restrictions (delete
    before/after, delay updates, prune empty dirs) do not apply to a sender.

    Raises:
        Unsupported: a client without the ``v`` capability (legacy flist
            encodings are not implemented).
    """
    caps = opts.capabilities
    if "v" not in caps:
        raise Unsupported("backupd needs a client that sends varint file lists (rsync 3.1.0 or later)")
    flags = CompatFlags.SYMLINK_TIMES
    for letter, flag in _CAP_FLAGS:
        if letter in caps:
            flags |= flag
    if allow_inc_recurse and inc_recurse_allowed(opts):
        flags |= CompatFlags.INC_RECURSE
    return SetupPlan(
        compat_flags=flags,
        send_checksum_list=opts.checksum_choice is None,
        send_compress_list=opts.compression_on and opts.compress_choice is None,
    )


def inc_recurse_allowed(opts: TransferOptions) -> bool:
    """Whether rsyncd recurses incrementally with this client (compat.c set_allow_inc_recurse).

    The client must offer ``i`` and recurse without --use-qsort; a
    receiving server also refuses it for --delete-before/-after,
    --delay-updates and -m, whose passes need the whole list.
    """
    if "i" not in (opts.capabilities or "") or not opts.recursive or opts.use_qsort:
        return False
    return opts.sender or not (opts.delete_mode in ("before", "after") or opts.delay_updates
                               or opts.prune_empty_dirs)


def choose_name(client_list: bytes, ours: Sequence[str], what: str) -> str:
    """First name of the client's space-separated list that is in ``ours``.

    ``xxhash`` is an alias of ``xxh64``; names compare case-insensitively.

    Raises:
        Unsupported: nothing in common ("Failed to negotiate a ... choice", exit 4).
    """
    for raw in client_list.decode("ascii", "replace").split():
        name = raw.lower()
        name = "xxh64" if name == "xxhash" else name
        if name in ours:
            return name
    raise Unsupported(f"Failed to negotiate a {what} choice: client offered {client_list.decode('ascii', 'replace')!r}")


def finish_setup(
    plan: SetupPlan,
    opts: TransferOptions,
    *,
    client_checksums: bytes | None,
    client_compressions: bytes | None,
    our_checksums: Sequence[str],
    seed: int,
) -> Negotiated:
    """Combine the client's lists (or forced choices) into the session's algorithms.

    Raises:
        Unsupported: a forced or offered name we do not implement (exit 4).
    """
    if plan.send_checksum_list:
        checksum = choose_name(client_checksums or b"", our_checksums, "checksum")
    else:
        checksum = _forced("md5" if opts.checksum_choice is None else opts.checksum_choice, our_checksums, "checksum")
    file_checksum = checksum
    if opts.checksum_choice_file:
        file_checksum = _forced(opts.checksum_choice_file, our_checksums, "checksum")
    if plan.send_compress_list:
        compression: str | None = choose_name(client_compressions or b"", OUR_COMPRESSIONS, "compress")
    elif opts.compression_on:
        forced = "zlib" if opts.compress_choice is None else opts.compress_choice  # "" is refused, as rsync
        compression = _forced(forced, OUR_COMPRESSIONS, "compress")
    else:
        compression = None
    if compression == "none" or opts.compress_level == 0:
        compression = None
    return Negotiated(plan.compat_flags, checksum, file_checksum, compression, opts.compress_level, seed)


def legacy_setup(opts: TransferOptions, seed: int) -> Negotiated:
    """The session's algorithms below protocol 30: nothing is negotiated.

    Transfer sums are CSUM_MD4_OLD (``md4_old``), ``-c`` file sums plain
    MD4, ``-z`` the zlib token stream; no compat flags. Adjusts ``opts``
    as compat.c does: ``--append`` becomes ``--append-verify``, a plain
    ``--delete`` means ``--delete-before``. Source: rsync
    checksum.c parse_csum_name(NULL) for protocols 27-29, compat.c
    setup_protocol() (negotiate_the_strings is protocol 30+).
    """
    if opts.append == 1:
        opts.append = 2  # --append is --append-verify below 30
    named = {"--delete-before", "--delete-during", "--delete-delay", "--delete-after"}
    if opts.delete_mode == "during" and not named & set(opts.given):
        opts.delete_mode = "before"  # a plain --delete deletes before the transfer below 30
    compression = "zlib" if opts.compression_on and opts.compress_level != 0 else None
    return Negotiated(CompatFlags(0), MD4_OLD, "md4", compression, opts.compress_level, seed)


def legacy_refusal(opts: TransferOptions, protocol: int) -> str | None:
    """What rsync refuses to do below protocol 30 with these options, in its words; None if nothing.

    Source: compat.c setup_protocol() (a 3.x client checks the same and
    stops first; an older client cannot ask for these).
    """
    if protocol < 30:
        for wanted, what in ((opts.acls, "--acls"), (opts.xattrs, "--xattrs")):
            if wanted:
                return f"{what} requires protocol 30 or higher (negotiated {protocol})."
    if protocol >= 29:
        return None
    if opts.fuzzy:
        return f"--fuzzy requires protocol 29 or higher (negotiated {protocol})."
    alt = f"--{opts.alt_dest_type}-dest"
    if opts.alt_dest_dirs and opts.inplace:
        return f"{alt} with --inplace requires protocol 29 or higher (negotiated {protocol})."
    if len(opts.alt_dest_dirs) > 1:
        return f"Using more than one {alt} option requires protocol 29 or higher (negotiated {protocol})."
    if opts.prune_empty_dirs:
        return f"--prune-empty-dirs requires protocol 29 or higher (negotiated {protocol})."
    return None


def _forced(name: str, ours: Sequence[str], what: str) -> str:
    name = "xxh64" if name == "xxhash" else name
    if name not in ours:
        raise Unsupported(f"unknown {what} name: {name} (backupd supports {' '.join(ours)})")
    return name


def file_list_options(opts: TransferOptions, negotiated: Negotiated, protocol: int) -> FlistOptions:
    """What shapes a file-list entry for this session, as both ends derive it.

    From the client's options (-o -g -l -D -H -c --numeric-ids) and the
    negotiated compat flags and file checksum (rsync flist.c, protocol 30+).
    """
    flags = negotiated.compat_flags
    return FlistOptions(
        protocol=protocol,
        preserve_uid=opts.owner,
        preserve_gid=opts.group,
        preserve_links=opts.links,
        preserve_devices=opts.devices,
        preserve_specials=opts.specials,
        preserve_hard_links=bool(opts.hard_links),
        csum_len=Checksum(negotiated.file_checksum, 0).digest_len if opts.checksum else 0,
        inc_recurse=bool(flags & CompatFlags.INC_RECURSE),
        numeric_ids=opts.numeric_ids,
        id0_names=bool(flags & CompatFlags.ID0_NAMES),
        preserve_acls=opts.acls,
    )
