"""A scripted pulling client for the sender role: run_pull over a socketpair, no rsync.

The "client" side is written from the wire description (rsync-protocol-a.md
§7-8, -b.md §1.4, §3-6) with the codecs the protocol tests already hold to
the captures: it sends the filter list (and --files-from names), decodes
the file list, asks for files with block sums of a basis, rebuilds each
file from the tokens and checks the whole-file sum, then walks the end
phase. What it records is what a real receiver would see.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from loguru import logger

from backupd.config.model import ModuleConfig
from backupd.protocol.constants import NDX_DEL_STATS, NDX_DONE, CompatFlags, ItemFlags, MsgCode
from backupd.protocol.filters import encode_filter_list
from backupd.protocol.flist import FileEntry, FlistDecoder, FlistOptions, sort_key
from backupd.protocol.mux import MuxDecoder, encode_frame
from backupd.protocol.negotiate import Negotiated
from backupd.protocol.server_args import parse_server_args
from backupd.protocol.sums import Checksum, SumHead, decode_sum_head, generate_sums, sum_sizes
from backupd.protocol.tokens import TOKEN_END, BlockMatch, Literal, make_token_reader
from backupd.protocol.wire import (
    NdxDecoder,
    NdxEncoder,
    decode_shortint,
    decode_varint,
    decode_varlong,
    encode_shortint,
    encode_varint,
)
from backupd.roles.channel import Inbox, Outbox
from backupd.roles.session import ModuleRequest

COMPAT = (CompatFlags.SYMLINK_TIMES | CompatFlags.SAFE_FLIST | CompatFlags.CHKSUM_SEED_FIX
          | CompatFlags.VARINT_FLIST_FLAGS | CompatFlags.ID0_NAMES)
SEED = 0x1234567


class _Incoming:
    """The server's bytes: a thread demultiplexes them into DATA and messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.pos = 0
        self.messages: list[tuple[MsgCode, bytes]] = []
        self.eof = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        mux = MuxDecoder()
        while chunk := self.sock.recv(1 << 16):
            mux.feed(chunk)
            with self.cond:
                while (frame := mux.next_frame()) is not None:
                    if frame.code == MsgCode.DATA:
                        self.data += frame.payload
                    else:
                        self.messages.append((frame.code, frame.payload))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def read(self, n: int) -> bytes:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.data) - self.pos >= n or self.eof, timeout=20)
            if not ok or len(self.data) - self.pos < n:
                raise EOFError(f"server data ended: wanted {n} bytes at {self.pos} of {len(self.data)}")
            out = bytes(self.data[self.pos : self.pos + n])
            self.pos += n
            return out

    def rest(self) -> bytes:
        self.thread.join(20)
        return bytes(self.data[self.pos :])


@dataclass
class Received:
    """One file the server sent: header, sum head echo, tokens, whether the sum checked."""

    ndx: int
    iflags: int
    head: SumHead
    data: bytes
    literal: int
    matched: int
    sum_ok: bool


@dataclass
class PullResult:
    """What the client saw."""

    exit_code: int
    entries: list[FileEntry]
    wire_names: list[bytes]
    io_error: int
    users: dict[int, bytes]
    groups: dict[int, bytes]
    files: dict[bytes, Received] = field(default_factory=dict)
    echoes: list[tuple[int, int]] = field(default_factory=list)
    stats: tuple[int, ...] = ()
    del_stats_echo: tuple[int, ...] | None = None
    messages: list[tuple[MsgCode, bytes]] = field(default_factory=list)
    trailing: bytes = b""
    no_send: list[int] = field(default_factory=list)
    cut: str | None = None
    error: Exception | None = None

    def names(self) -> list[bytes]:
        """Entry names in ndx order."""
        return [e.name for e in self.entries]

    def by_name(self, name: bytes) -> FileEntry:
        """The entry called ``name``."""
        return next(e for e in self.entries if e.name == name)

    def texts(self, code: MsgCode) -> list[str]:
        """Payloads of the messages with ``code``, as text."""
        return [p.decode(errors="replace") for c, p in self.messages if c == code]


class PullClient:
    """One scripted pull against ``run_pull``.

    Args:
        module_dir: the module's directory.
        args: the client's server arguments before ``.`` (``["-r", "-t"]``).
        paths: path arguments after ``.`` (``["mod/"]``).
        checksum / compression: the negotiated names.
        module: extra ModuleConfig fields.
    """

    def __init__(self, module_dir: Path, args: list[str], paths: list[bytes], *,
                 checksum: str = "xxh128", compression: str | None = None,
                 protocol: int = 31, read_only: bool = True, **module) -> None:
        argv = [b"--server", b"--sender", *(a.encode() for a in args), b".", *paths]
        self.opts = parse_server_args(argv)
        self.module = ModuleConfig(name="mod", path=Path(module_dir), **module)
        self.checksum_name, self.compression, self.protocol = checksum, compression, protocol
        self.read_only = read_only
        self.checksum = Checksum(checksum, SEED)
        self.ndx_out, self.ndx_in = NdxEncoder(), NdxDecoder()

    # -- server side -------------------------------------------------------------------
    def _start_server(self, sock: socket.socket) -> tuple[threading.Thread, dict]:
        request = ModuleRequest(self.module, None, self.read_only, self.protocol, self.opts, None)
        negotiated = Negotiated(COMPAT, self.checksum_name, self.checksum_name, self.compression, None, SEED)
        return start_pull(sock, request, negotiated)

    # -- the pull ----------------------------------------------------------------------
    def run(self, *, rules: list[bytes] = (), files_from: list[bytes] | None = None,
            want=lambda entry: entry.is_reg, basis: dict[bytes, bytes] | None = None,
            iflags: int = ItemFlags.TRANSFER, redo: list[bytes] = (), del_stats: tuple | None = None,
            before_requests=None, echo: list[tuple[bytes, int]] = (),
            success: list[bytes] = ()) -> PullResult:
        """Pull: send rules (and names), read the list, request ``want``ed files, finish.

        ``basis`` maps a name to the client's old copy (block sums are sent
        for it); ``redo`` names are requested again in phase 1 with full
        sums; ``echo`` sends non-transfer headers; ``success`` names get a
        MSG_SUCCESS after phase 0 (--remove-source-files);
        ``before_requests(result)`` runs after the list is read (to change
        the tree under the server).
        """
        ours, theirs = socket.socketpair()
        thread, box = self._start_server(theirs)
        incoming = _Incoming(ours)
        send = lambda data: ours.sendall(encode_frame(MsgCode.DATA, data)) if data else None  # noqa: E731
        send(encode_filter_list(rules))
        if files_from is not None:
            send(b"".join(n + b"\0" for n in files_from) + b"\0")
        try:
            result = self._read_list(incoming)
        except EOFError as exc:       # refused before the list
            result = PullResult(-1, [], [], 0, {}, {}, cut=str(exc))
        if not result.entries:
            thread.join(20)
            result.exit_code = box.get("code")
            result.trailing, result.messages = incoming.rest(), incoming.messages
            result.error = box.get("error")
            ours.close()
            return result
        if before_requests is not None:
            before_requests(result)
        basis = basis or {}
        out = bytearray()
        for name, flags in echo:
            out += self.ndx_out.encode(result.names().index(name)) + encode_shortint(flags)
        wanted = [n for n, e in enumerate(result.entries) if want(e)]
        for ndx in wanted:
            out += self._request(ndx, result.entries[ndx], basis.get(result.entries[ndx].name), iflags, False)
        out += self.ndx_out.encode(NDX_DONE)
        send(bytes(out))
        out.clear()
        for name in success:
            ndx = result.names().index(name).to_bytes(4, "little")
            ours.sendall(encode_frame(MsgCode.SUCCESS, ndx))
        for name in redo:
            ndx = result.names().index(name)
            out += self._request(ndx, result.entries[ndx], basis.get(name), ItemFlags.TRANSFER, True)
        out += self.ndx_out.encode(NDX_DONE) * 2
        if del_stats is not None:
            out += self.ndx_out.encode(NDX_DEL_STATS) + b"".join(map(encode_varint, del_stats))
        out += self.ndx_out.encode(NDX_DONE) * (2 if self.protocol >= 31 else 1)   # no DONE #4 below 31
        send(bytes(out))
        try:
            self._read_transfer(incoming, result, basis)
        except EOFError as exc:       # the server stopped (a fatal error): the test looks at why
            result.cut = str(exc)
        thread.join(30)
        result.exit_code = box.get("code")
        result.trailing = incoming.rest()
        result.messages = incoming.messages
        result.no_send = [int.from_bytes(p, "little") for c, p in incoming.messages if c == MsgCode.NO_SEND]
        ours.close()
        result.error = box.get("error")
        return result

    def _read_list(self, incoming: _Incoming) -> PullResult:
        o = self.opts
        csum_len = self.checksum.digest_len if o.checksum else 0
        decoder = FlistDecoder(FlistOptions(
            protocol=self.protocol, preserve_uid=o.owner, preserve_gid=o.group, preserve_links=o.links,
            preserve_devices=o.devices, preserve_specials=o.specials, csum_len=csum_len,
            preserve_hard_links=bool(o.hard_links), numeric_ids=o.numeric_ids, id0_names=True,
        ))
        wire = []
        while (entry := decoder.read_entry(incoming.read)) is not None:
            wire.append(entry)
        users, groups = decoder.read_id_lists(incoming.read)
        entries = sorted(wire, key=lambda e: sort_key(e.name, e.is_dir))
        return PullResult(-1, entries, [e.name for e in wire], decoder.io_error, users, groups)

    def _request(self, ndx: int, entry: FileEntry, old: bytes | None, iflags: int, redo: bool) -> bytes:
        out = self.ndx_out.encode(ndx) + encode_shortint(iflags)
        if self.opts.dry_run or not iflags & ItemFlags.TRANSFER:
            return out
        if not old:
            return out + SumHead(0, 0, 0, 0).encode()
        head = sum_sizes(len(old), self.checksum.digest_len, redo=redo)
        if self.opts.append and not redo:
            return out + head.encode()
        return out + head.encode() + generate_sums(old, head, self.checksum)

    def _read_transfer(self, incoming: _Incoming, result: PullResult, basis: dict[bytes, bytes]) -> None:
        read = incoming.read
        reader = make_token_reader(self.compression)
        dones = 0
        while dones < 3:
            ndx = self.ndx_in.decode(read)
            if ndx == NDX_DONE:
                dones += 1
                continue
            iflags = decode_shortint(read)
            if not iflags & ItemFlags.TRANSFER or self.opts.dry_run:
                result.echoes.append((ndx, iflags))
                continue
            entry = result.entries[ndx]
            result.files[entry.name] = self._read_file(read, reader, ndx, iflags, basis.get(entry.name) or b"")
        result.stats = tuple(decode_varlong(read, 3) for _ in range(5))
        if self.protocol < 31:
            return
        ndx = self.ndx_in.decode(read)
        if ndx == NDX_DEL_STATS:
            result.del_stats_echo = tuple(decode_varint(read) for _ in range(5))
            ndx = self.ndx_in.decode(read)
        assert ndx == NDX_DONE, f"want the reply to DONE #4, got ndx {ndx}"

    def _read_file(self, read, reader, ndx: int, iflags: int, old: bytes) -> Received:
        head = decode_sum_head(read(16), self.checksum.digest_len)
        reader.start_file(head)
        out = bytearray()
        literal = matched = 0
        if self.opts.append and head.count:
            out += old[: head.prefix_len]
        while (token := reader.next_token(read)) is not TOKEN_END:
            if isinstance(token, Literal):
                out += token.data
                literal += len(token.data)
            else:
                assert isinstance(token, BlockMatch)
                start = token.index * head.block_len
                block = old[start : start + head.block_size(token.index)]
                reader.see_block(block)
                out += block
                matched += len(block)
        file_sum = read(self.checksum.digest_len)
        hasher = self.checksum.file_sum_hasher()
        hasher.update(bytes(out) if self.opts.append != 1 else bytes(out[head.prefix_len :]))
        return Received(ndx, iflags, head, bytes(out), literal, matched, hasher.digest() == file_sum)


def start_pull(sock: socket.socket, request: ModuleRequest, negotiated: Negotiated) -> tuple[threading.Thread, dict]:
    """run_pull in a thread on ``sock``: returns (thread, box).

    box gets "code", "error" if it raised, and "exit_unread" (the code) if it ended without reading on.
    """
    from backupd.roles.sender import run_pull

    inbox = Inbox(sock)
    inbox.start_mux()
    box: dict = {}
    # Session.exit_unread (a pull with nothing to send): recorded, the socket is closed below
    session = SimpleNamespace(inbox=inbox, outbox=Outbox(sock), log=logger,
                              exit_unread=lambda code: box.setdefault("exit_unread", code))

    def serve() -> None:
        try:
            box["code"] = run_pull(session, request, negotiated)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            box["error"] = exc
            box["code"] = getattr(exc, "exit_code", -1)
        finally:
            session.outbox.close()
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, box
