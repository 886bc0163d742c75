"""The pull sender's incremental file lists against a real rsyncd pull, byte by byte.

``daemon-pull-incremental-tricky-names``: ``rsync -av rsync://host/mod/ dst/``
from rsyncd 3.5.0 with CF_INC_RECURSE. The same tree is rebuilt here and
``run_pull`` is fed the client's captured bytes (filter list, the
generator's requests with the parent-dir aliases, the per-list NDX_DONEs).
What the server sends must frame the lists exactly as rsyncd did: each
announcement ndx (``NDX_FLIST_OFFSET - dir_index``, sharing the ndx
encoder's state with the later records), each end marker, NDX_FLIST_EOF,
and the whole transfer part up to the statistics (echoes of the alias
ndx, the empty files' data, the echoed DONEs). Entry bytes are compared
by name only: rsyncd sends a list in readdir order, backupd sorted.
"""

from __future__ import annotations

import os
import socket

from backupd.config.model import ModuleConfig
from backupd.protocol.constants import NDX_DONE, NDX_FLIST_EOF, ItemFlags, MsgCode
from backupd.protocol.flist import FlistDecoder, FlistOptions, sort_key
from backupd.protocol.inc_flist import plan_inc_lists
from backupd.protocol.mux import encode_frame
from backupd.protocol.negotiate import Negotiated
from backupd.protocol.server_args import parse_server_args
from backupd.protocol.wire import ByteReader, NdxDecoder, decode_int32, decode_shortint
from backupd.roles.session import ModuleRequest
from tests.protocol.captures import client_side, server_side, split_frames
from tests.roles.sender_harness import start_pull

NAME = "daemon-pull-incremental-tricky-names"


def _fopts(opts) -> FlistOptions:
    return FlistOptions(protocol=32, preserve_uid=opts.owner, preserve_gid=opts.group,
                        preserve_links=opts.links, preserve_devices=opts.devices,
                        preserve_specials=opts.specials, inc_recurse=True, id0_names=True)


def split_pull(data: bytes, fopts: FlistOptions) -> dict:
    """The sender's stream cut into lists (announce bytes, entries, end bytes), EOF, transfer part."""
    r, ndx_in, decoder = ByteReader(data), NdxDecoder(), FlistDecoder(fopts)
    lists, announce = [], b""
    while True:
        entries = []
        while True:
            at = r.pos
            entry = decoder.read_entry(r.read)
            if entry is None:
                break
            entries.append(entry)
        lists.append((announce, entries, data[at : r.pos]))
        at = r.pos
        ndx = ndx_in.decode(r.read)
        if ndx == NDX_FLIST_EOF:
            eof = data[at : r.pos]
            break
        announce = data[at : r.pos]
        decoder.next_list()
    start, dones = r.pos, 0
    while dones < len(lists) - 1 + 3:  # the per-list DONEs, the two phase DONEs and the last
        ndx = ndx_in.decode(r.read)
        if ndx == NDX_DONE:
            dones += 1
            continue
        iflags = decode_shortint(r.read)
        if iflags & ItemFlags.TRANSFER:
            r.read(16)                                # sum head (count 0: no basis)
            while (token := decode_int32(r.read)) != 0:
                r.read(token)
            r.read(16)                                # xxh128 whole-file sum
    return {"lists": lists, "eof": eof, "transfer": data[start : r.pos]}


def _build_tree(root, entries) -> None:
    for entry in sorted(entries, key=lambda e: e.name):
        path = root / entry.name.decode()
        if entry.is_dir:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(b"")


def _serve(module_dir, client, server) -> bytes:
    opts = parse_server_args(client.argv)
    ours, theirs = socket.socketpair()
    request = ModuleRequest(ModuleConfig(name="mod", path=module_dir, numeric_ids=False), None, True, 32, opts, None)
    negotiated = Negotiated(server.compat_flags, "xxh128", "xxh128", None, None, server.seed)
    thread, box = start_pull(theirs, request, negotiated)
    ours.sendall(encode_frame(MsgCode.DATA, client.data))
    raw = bytearray()
    ours.settimeout(20)
    while chunk := ours.recv(1 << 16):
        raw += chunk
    thread.join(20)
    ours.close()
    assert "error" not in box, box.get("error")
    assert box["code"] == 0
    return split_frames(bytes(raw))[0]


def test_sub_list_framing_matches_rsyncd(tmp_path):
    client = client_side(NAME)
    server = server_side(NAME, client)
    fopts = _fopts(client.opts)
    want = split_pull(server.data, fopts)
    _build_tree(tmp_path, [e for _, entries, _ in want["lists"] for e in entries if e.name != b"."])
    got = split_pull(_serve(tmp_path, client, server), fopts)

    assert len(got["lists"]) == len(want["lists"]) == 11
    for (g_ann, g_entries, g_end), (w_ann, w_entries, w_end) in zip(got["lists"], want["lists"], strict=True):
        assert g_ann.hex() == w_ann.hex()
        assert g_end.hex() == w_end.hex() == "0000"
        w_sorted = sorted(w_entries, key=lambda e: sort_key(e.name, e.is_dir))
        assert [e.name for e in g_entries] == [e.name for e in w_sorted]
    assert got["eof"].hex() == want["eof"].hex() == "fffe80020000"
    dot = got["lists"][0][1][0]
    if os.geteuid() == 0:  # uid/gid names inline, no id lists (flist.c send_file_entry with inc_recurse)
        assert (dot.user_name, dot.group_name) == (b"root", b"root") == (
            want["lists"][0][1][0].user_name, want["lists"][0][1][0].group_name)
    assert got["transfer"].hex() == want["transfer"].hex()


def test_plan_numbers_the_lists_as_rsyncd():
    client = client_side(NAME)
    want = split_pull(server_side(NAME, client).data, _fopts(client.opts))
    every = sorted((e for _, entries, _ in want["lists"] for e in entries),
                   key=lambda e: sort_key(e.name, e.is_dir))
    plan = plan_inc_lists(every)
    assert [sub.start for sub in plan.lists] == [1, 22, 23, 24, 27, 29, 33, 35, 37, 39, 40]
    assert [sub.dir_index for sub in plan.lists[1:]] == [1, 2, 3, 8, 4, 9, 10, 5, 6, 7]
    assert [every[p].name for p in plan.dir_flist] == [
        b".", b".hidden", b"A_dir", b"a-b", b"a", b"sp ace", b"x", b"z", b"a-b/sub", b"a/b", b"a/b/c"]
    assert every[plan.lists[0].parent].name == b"."
    for sub, (_, entries, _) in zip(plan.lists, want["lists"], strict=True):
        assert sorted(every[p].name for p in sub.members) == sorted(e.name for e in entries)
