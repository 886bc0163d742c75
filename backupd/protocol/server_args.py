"""The client's ``--server ...`` argument vector -> TransferOptions.

Source: rsync options.c server_options() (what a client sends) and
parse_arguments() (how a server reads it); rsync-protocol-a.md §3.6 and §4.
Option values before the ``.`` argument are backslash-escaped by the client
and unescaped here, as the 3.5.0 daemon does (io.c unbackslash_arg).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from backupd.errors import ExitCode, ProtocolError, RsyncError, Unsupported

MAX_ARGS = 1024
MAX_ARG_LEN = 4096


@dataclass
class TransferOptions:
    """What the client asked for. Counts (``verbose``, ``append``) count repeats."""

    sender: bool = False
    verbose: int = 0
    recursive: bool = False
    dirs: bool = False
    links: bool = False
    owner: bool = False
    group: bool = False
    devices: bool = False
    specials: bool = False
    times: bool = False
    perms: bool = False
    executability: bool = False
    checksum: bool = False
    relative: bool = False
    implied_dirs: bool = True
    one_file_system: int = 0
    sparse: bool = False
    dry_run: bool = False
    whole_file: bool | None = None
    hard_links: int = 0
    update: bool = False
    ignore_times: bool = False
    keep_dirlinks: bool = False
    omit_dir_times: bool = False
    omit_link_times: bool = False
    prune_empty_dirs: bool = False
    mkpath: bool = False
    copy_links: bool = False
    copy_dirlinks: bool = False
    fuzzy: int = 0
    backup: bool = False
    backup_dir: bytes | None = None
    suffix: bytes | None = None
    compress: bool = False
    compress_level: int | None = None
    compress_choice: str | None = None
    checksum_choice: str | None = None
    checksum_choice_file: str | None = None
    capabilities: str = ""
    delete_mode: str | None = None
    delete_excluded: bool = False
    delete_missing_args: bool = False
    ignore_missing_args: bool = False
    max_delete: int | None = None
    force: bool = False
    ignore_errors: bool = False
    size_only: bool = False
    ignore_existing: bool = False
    existing: bool = False
    min_size: int | None = None
    max_size: int | None = None
    modify_window: int = 0
    partial: bool = False
    partial_dir: bytes | None = None
    delay_updates: bool = False
    inplace: bool = False
    append: int = 0
    temp_dir: bytes | None = None
    numeric_ids: bool = False
    open_noatime: bool = False  # --open-noatime: read sources and basis files without updating atimes
    usermap: str | None = None  # --usermap (or --chown USER): FROM:TO,... (roles/idmap.py)
    groupmap: str | None = None  # --groupmap (or --chown :GROUP)
    timeout_s: int = 0
    bwlimit: str | None = None
    block_size: int | None = None
    checksum_seed: int | None = None
    files_from: bytes | None = None
    from0: bool = False
    remove_source_files: bool = False
    log_format: str | None = None
    stats: bool = False
    list_only: bool = False
    use_qsort: bool = False
    protect_args: bool = False
    safe_links: bool = False
    copy_unsafe_links: bool = False
    paths: list[bytes] = field(default_factory=list)
    given: list[str] = field(default_factory=list)
    letters: str = ""
    fsync: bool = False
    cvs_exclude: bool = False
    alt_dest_type: str | None = None
    alt_dest_dirs: list[bytes] = field(default_factory=list)
    xattrs: int = 0
    acls: bool = False

    @property
    def compression_on(self) -> bool:
        """True when compression is to be negotiated or was forced."""
        return self.compress or self.compress_level not in (None, 0) or self.compress_choice not in (None, "none")

    @property
    def deleting(self) -> bool:
        """True when any --delete form is active."""
        return self.delete_mode is not None


def unbackslash(arg: bytes) -> bytes:
    """Remove the client's backslash escapes (io.c unbackslash_arg)."""
    if b"\\" not in arg:
        return arg
    out, i = bytearray(), 0
    while i < len(arg):
        if arg[i] == 0x5C and i + 1 < len(arg):
            i += 1
        out.append(arg[i])
        i += 1
    return bytes(out)


def _letter_table() -> dict[str, Callable[[TransferOptions], None]]:
    def setter(name: str, value=True):
        return lambda o: setattr(o, name, value)

    def counter(name: str):
        return lambda o: setattr(o, name, getattr(o, name) + 1)

    def devices_specials(o: TransferOptions) -> None:
        o.devices = o.specials = True

    def acls(o: TransferOptions) -> None:
        o.acls = o.perms = True  # -A implies -p (options.c)

    table = {
        "v": counter("verbose"), "q": lambda o: None, "b": setter("backup"), "u": setter("update"),
        "n": setter("dry_run"), "l": setter("links"), "d": setter("dirs"), "K": setter("keep_dirlinks"),
        "m": setter("prune_empty_dirs"), "O": setter("omit_dir_times"), "J": setter("omit_link_times"),
        "y": counter("fuzzy"), "L": setter("copy_links"), "k": setter("copy_dirlinks"),
        "W": setter("whole_file"), "H": counter("hard_links"), "o": setter("owner"), "g": setter("group"),
        "D": devices_specials, "t": setter("times"), "p": setter("perms"), "E": setter("executability"),
        "r": setter("recursive"), "c": setter("checksum"), "I": setter("ignore_times"),
        "R": setter("relative"), "x": counter("one_file_system"), "S": setter("sparse"),
        "z": setter("compress"), "s": setter("protect_args"), "P": setter("partial"),
        "C": setter("cvs_exclude"), "X": counter("xattrs"), "A": acls,
    }
    return table


_LETTERS = _letter_table()
_REFUSED_LETTERS = {"U", "N"}  # --atimes, --crtimes
_REFUSED_LONG = {
    "iconv", "copy-devices", "write-devices", "chown", "fake-super", "super",
    "only-write-batch", "read-batch", "write-batch",
    "acls", "xattrs", "atimes", "crtimes",
}
_DAEMON_REFUSED = {"iconv", "copy-devices", "write-devices"}  # refused by stock rsyncd 3.5.0's defaults
# Options that take a value: "--name=value" or, as popt reads them, "--name value".
_TWO_ARG = {"backup-dir", "partial-dir", "temp-dir", "compare-dest", "copy-dest", "link-dest", "files-from",
            "max-delete", "min-size", "max-size", "modify-window", "timeout", "bwlimit", "block-size",
            "checksum-seed", "log-format", "out-format", "suffix", "compress-level", "compress-choice", "zc",
            "checksum-choice", "cc", "usermap", "groupmap"}


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise popt_error(f"--{name}={value}", "invalid numeric value") from None


def popt_error(shown: str, what: str) -> Unsupported:
    """An option the server's popt rejects, as rsyncd reports it (exit 4, no role tag).

    rsync options.c parse_arguments() puts ``on remote machine: ARG: WHAT``
    in err_buf (ARG as the client sent it, poptBadOption NOALIAS; WHAT from
    poptStrerror) and clientserver.c rsync_module() prints it with
    option_error() and exits RERR_UNSUPPORTED.
    """
    return Unsupported(f"rsync: on remote machine: {shown}: {what}")


def _refused(name: str, shown: str) -> Unsupported:
    """An option rsyncd serves and backupd does not: rsyncd's words for an option it does not know.

    ``iconv``, ``copy-devices`` and ``write-devices`` are in rsyncd's own
    default refusals (a module without ``charset``; loadparm's refuse
    options), so for those its words are the refuse-options message.
    """
    if name in _DAEMON_REFUSED:
        return Unsupported(f"rsync: The server is configured to refuse --{name}")
    return popt_error(shown, "unknown option")


MAX_BASIS_DIRS = 20  # rsync.h MAX_BASIS_DIRS


def _alt_dest(kind: str) -> Callable[[TransferOptions, str | None], None]:
    """--link-dest / --copy-dest / --compare-dest DIR, as options.c parse_arguments() takes them.

    One kind per transfer and at most MAX_BASIS_DIRS dirs; a violation is
    rsync's own message, exit 4 as every parse_arguments() failure in a
    daemon (the client checks first, so only a forged argument list gets here).
    """

    def handler(o: TransferOptions, v: str | None) -> None:
        if o.alt_dest_type is not None and o.alt_dest_type != kind:
            raise Unsupported(
                f"rsync: ERROR: the --{kind}-dest option conflicts with the --{o.alt_dest_type}-dest option"
            )
        if len(o.alt_dest_dirs) >= MAX_BASIS_DIRS:
            raise Unsupported(f"rsync: ERROR: at most {MAX_BASIS_DIRS} --{kind}-dest args may be specified")
        o.alt_dest_type = kind
        o.alt_dest_dirs.append(v.encode("utf-8", "surrogateescape"))

    return handler


def _long_table() -> dict[str, Callable[[TransferOptions, str | None], None]]:
    def flag(name: str, value=True):
        return lambda o, v: setattr(o, name, value)

    def delete(mode: str):
        return lambda o, v: setattr(o, "delete_mode", mode)

    def value_of(name: str, conv=lambda s: s):
        return lambda o, v: setattr(o, name, conv(v))

    def num(name: str):
        option = name.removesuffix("_s").replace("_", "-")
        return lambda o, v: setattr(o, name, _int(option, v))

    def as_bytes(name: str):
        return lambda o, v: setattr(o, name, v.encode("utf-8", "surrogateescape"))

    def append(o: TransferOptions, v: str | None) -> None:
        o.append += 1

    def name_map(attr: str, implies: str):
        def handler(o: TransferOptions, v: str | None) -> None:
            if getattr(o, attr) is not None:  # options.c OPT_USERMAP / OPT_GROUPMAP
                raise Unsupported(f"rsync: You can only specify --{attr} once.")
            setattr(o, attr, v)
            setattr(o, implies, True)  # --usermap implies -o, --groupmap -g
        return handler

    def max_delete(o: TransferOptions, v: str | None) -> None:
        n = _int("max-delete", v)
        o.max_delete = 0 if n < 0 else n

    def compress_choice(o: TransferOptions, v: str | None) -> None:
        o.compress_choice = v.lower()

    def checksum_choice(o: TransferOptions, v: str | None) -> None:
        first, _, second = v.lower().partition(",")
        o.checksum_choice = None if first == "auto" else first
        o.checksum_choice_file = second or None

    def no_w(o: TransferOptions, v: str | None) -> None:
        o.whole_file = False

    ignore = lambda o, v: None  # noqa: E731 - local options that only tune the client
    return {
        "server": ignore, "sender": flag("sender"), "delete": delete("during"), "del": delete("during"),
        "delete-before": delete("before"), "delete-during": delete("during"), "delete-delay": delete("delay"),
        "delete-after": delete("after"), "delete-excluded": flag("delete_excluded"),
        "delete-missing-args": flag("delete_missing_args"), "ignore-missing-args": flag("ignore_missing_args"),
        "max-delete": max_delete, "force": flag("force"), "ignore-errors": flag("ignore_errors"),
        "size-only": flag("size_only"), "ignore-existing": flag("ignore_existing"), "existing": flag("existing"),
        "min-size": num("min_size"), "max-size": num("max_size"), "modify-window": num("modify_window"),
        "partial": flag("partial"), "partial-dir": as_bytes("partial_dir"), "delay-updates": flag("delay_updates"),
        "inplace": flag("inplace"), "append": append, "temp-dir": as_bytes("temp_dir"),
        "numeric-ids": flag("numeric_ids"), "timeout": num("timeout_s"), "bwlimit": value_of("bwlimit"),
        "block-size": num("block_size"), "checksum-seed": num("checksum_seed"), "files-from": as_bytes("files_from"),
        "from0": flag("from0"), "remove-source-files": flag("remove_source_files"),
        "remove-sent-files": flag("remove_source_files"), "log-format": value_of("log_format"),
        "out-format": value_of("log_format"), "stats": flag("stats"), "list-only": flag("list_only"),
        "use-qsort": flag("use_qsort"), "backup-dir": as_bytes("backup_dir"), "suffix": as_bytes("suffix"),
        "compress-level": num("compress_level"), "compress-choice": compress_choice, "zc": compress_choice,
        "old-compress": lambda o, v: setattr(o, "compress_choice", "zlib"),
        "new-compress": lambda o, v: setattr(o, "compress_choice", "zlibx"),
        "checksum-choice": checksum_choice, "cc": checksum_choice, "no-W": no_w, "no-whole-file": no_w,
        "no-r": flag("recursive", False), "no-relative": flag("relative", False),
        "no-implied-dirs": flag("implied_dirs", False), "specials": flag("specials"),
        "no-specials": flag("specials", False), "no-devices": flag("devices", False),
        "safe-links": flag("safe_links"), "copy-unsafe-links": flag("copy_unsafe_links"),
        "info": ignore, "debug": ignore, "msgs2stderr": ignore, "no-msgs2stderr": ignore,
        "max-alloc": ignore, "fsync": flag("fsync"), "preallocate": ignore, "mkpath": flag("mkpath"),
        "skip-compress": ignore, "compress-threads": ignore, "stop-after": ignore, "stop-at": ignore,
        "no-i-r": ignore, "no-inc-recursive": ignore, "protect-args": flag("protect_args"),
        "secluded-args": flag("protect_args"), "dirs": flag("dirs"), "omit-dir-times": flag("omit_dir_times"),
        "link-dest": _alt_dest("link"), "copy-dest": _alt_dest("copy"), "compare-dest": _alt_dest("compare"),
        "usermap": name_map("usermap", "owner"), "groupmap": name_map("groupmap", "group"),
        "open-noatime": flag("open_noatime"), "no-open-noatime": flag("open_noatime", False),
    }


_LONG = _long_table()


def _parse_cluster(opts: TransferOptions, cluster: str) -> None:
    """Apply a short-option cluster; letters after a bad one still count (capabilities)."""
    error: RsyncError | None = None
    i = 0
    while i < len(cluster):
        letter = cluster[i]
        if letter == "e":
            opts.capabilities = cluster[i + 1 :]
            break
        if letter in ("B", "@", "T", "f", "M"):
            _short_with_value(opts, letter, cluster[i + 1 :])
            break
        handler = _LETTERS.get(letter)
        if letter in _REFUSED_LETTERS or handler is None:
            error = error or popt_error(f"-{cluster}", "unknown option")
        else:
            handler(opts)
            opts.letters += letter
        i += 1
    if error is not None:
        raise error


def _short_with_value(opts: TransferOptions, letter: str, value: str) -> None:
    if letter == "B":
        opts.block_size = _int("block-size", value)
    elif letter == "@":
        opts.modify_window = _int("modify-window", value)
    elif letter == "T":
        opts.temp_dir = value.encode("utf-8", "surrogateescape")
    else:
        raise Unsupported(f"backupd does not support -{letter} on the server side")


def _parse_long(opts: TransferOptions, arg: str, args: list[str], i: int) -> int:
    name, eq, value = arg[2:].partition("=")
    if name in _REFUSED_LONG:
        raise _refused(name, arg)
    handler = _LONG.get(name)
    if handler is None:
        raise popt_error(arg, "unknown option")
    if not eq and name in _TWO_ARG:
        if i + 1 >= len(args):  # popt's words (options.c parse_arguments), exit 1
            raise popt_error(f"--{name}", "missing argument")
        value, i = args[i + 1], i + 1
    handler(opts, value if (eq or name in _TWO_ARG) else None)
    return i


def parse_server_args(argv: list[bytes]) -> TransferOptions:
    """Parse the client's argument list; raise the first error (see parse_server_args_lenient)."""
    opts, error = parse_server_args_lenient(argv)
    if error is not None:
        raise error
    return opts


def parse_server_args_lenient(argv: list[bytes]) -> tuple[TransferOptions, RsyncError | None]:
    """Parse the client's argument list (without a program name).

    Keeps going after a bad option so that the setup phase (capabilities,
    compression, checksum choice) can still be completed before the error is
    reported, as rsyncd does (rsync-protocol-a.md §6.5). Returns the options
    and the first error, or None.

    ``argv`` holds the arguments as sent (bytes); options before ``.`` are
    unescaped, paths after it are kept verbatim.

    Raises:
        ProtocolError: no ``--server`` first, too many or too long arguments.
        Unsupported: an option popt would reject (unknown, a bad number, a
            missing value, conflicting alternate dirs) or one backupd refuses
            (-U, --iconv ...): rsyncd's message, exit 4 (clientserver.c
            rsync_module: parse_arguments fails -> option_error, RERR_UNSUPPORTED).
        RsyncError: an argument list without '.', exit 1.
    """
    opts = TransferOptions()
    if len(argv) > MAX_ARGS or any(len(a) > MAX_ARG_LEN for a in argv):
        return opts, ProtocolError(f"argument list over {MAX_ARGS} arguments or {MAX_ARG_LEN} bytes per argument")
    if not argv or argv[0] != b"--server":
        return opts, ProtocolError("argument list does not start with --server")
    dot = argv.index(b".") if b"." in argv else len(argv)
    args = [unbackslash(a).decode("utf-8", "surrogateescape") for a in argv[1:dot]]
    error: RsyncError | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        try:
            if arg.startswith("--"):
                i = _parse_long(opts, arg, args, i)
                opts.given.append(arg.split("=")[0])
            elif arg.startswith("-") and len(arg) > 1:
                _parse_cluster(opts, arg[1:])
            else:
                raise RsyncError(f"unexpected argument {arg!r} before '.'", ExitCode.SYNTAX)
        except RsyncError as exc:
            error = error or exc
        i += 1
    if dot == len(argv):
        error = error or RsyncError("argument list has no '.' separator", ExitCode.SYNTAX)
    if opts.delete_excluded and opts.delete_mode is None:
        opts.delete_mode = "during"  # --delete-excluded implies --delete (options.c)
    if opts.backup_dir is not None:
        opts.backup = True  # options.c: --backup-dir implies --backup
    opts.paths = list(argv[dot + 1 :])
    return opts, error


def has_protected_args(first_list: list[bytes]) -> bool:
    """True if the short-option cluster starts with ``s`` (a second list follows)."""
    for arg in first_list[1:]:
        if arg.startswith(b"-") and not arg.startswith(b"--"):
            return arg[1:2] == b"s"
    return False


LETTER_NAMES = {
    "v": "verbose", "q": "quiet", "b": "backup", "u": "update", "n": "dry-run", "l": "links", "d": "dirs",
    "K": "keep-dirlinks", "m": "prune-empty-dirs", "O": "omit-dir-times", "J": "omit-link-times",
    "y": "fuzzy", "L": "copy-links", "k": "copy-dirlinks", "W": "whole-file", "H": "hard-links",
    "o": "owner", "g": "group", "D": "devices", "t": "times", "p": "perms", "E": "executability",
    "r": "recursive", "c": "checksum", "I": "ignore-times", "R": "relative", "x": "one-file-system",
    "S": "sparse", "z": "compress", "P": "partial", "s": "secluded-args", "C": "cvs-exclude",
    "X": "xattrs", "A": "acls",
}


def read_flags(opts: TransferOptions, module_open_noatime: bool | None) -> int:
    """Extra flags of a session's read-only opens: ``os.O_NOATIME`` for ``--open-noatime``.

    The module's ``open noatime``, when set, wins over the client's option
    (clientserver.c rsync_module: lp_open_noatime >= 0); rsync adds the flag
    in do_open and the sender's confined opens.
    """
    wanted = opts.open_noatime if module_open_noatime is None else module_open_noatime
    return getattr(os, "O_NOATIME", 0) if wanted else 0


def refused_option(opts: TransferOptions, patterns: tuple[str, ...]) -> str | None:
    """The first option the client used that a module's ``refuse options`` matches.

    Patterns are rsyncd's: wildcards allowed; ``delete`` also refuses every
    ``delete-*`` form; a ``!`` prefix exempts an option. Returns the option as
    rsyncd names it (``--delete``), or None.
    """
    import fnmatch

    used = [g[2:] for g in opts.given] + [LETTER_NAMES[c] for c in opts.letters if c in LETTER_NAMES]
    if opts.compress_choice or opts.compress_level:
        used.append("compress")
    allowed = [p[1:] for p in patterns if p.startswith("!")]
    for name in used:
        if any(fnmatch.fnmatchcase(name, a) for a in allowed):
            continue
        for pattern in patterns:
            if pattern.startswith("!"):
                continue
            if pattern == "delete" and name.startswith("delete"):
                return "--delete"  # rsyncd names the pattern that refuses every delete-* form
            letter = next((c for c, long in LETTER_NAMES.items() if long == name), None)
            if fnmatch.fnmatchcase(name, pattern) or (letter is not None and fnmatch.fnmatchcase(letter, pattern)):
                return f"--{name} (-{letter})" if letter else f"--{name}"
    return None
