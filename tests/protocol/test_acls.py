"""The ACL codec (protocol/acls.py) against our own captures, round trips and junk.

Captures daemon-{push,pull}-acls_c3.5.0 were recorded with rsync-tap.py
between the stock 3.5.0 client and rsyncd 3.5.0 (as root, module on XFS) for
SOURCE below (set with pylibacl from these ACL texts).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backupd.errors import ProtocolError
from backupd.protocol.acls import AclDecoder, AclEncoder, IdAccess, RsyncAcl, fake_perms, strip_perms
from backupd.protocol.flist import FlistDecoder
from backupd.protocol.wire import ByteReader

from .captures import client_side
from .test_flist_captures import flist_options
from .test_xattrs import server_data


def U(i, p):
    return IdAccess(i, p, True)


def G(i, p):
    return IdAccess(i, p, False)


# a.txt, b.txt: u::rw-,u:1000:rw-,u:65534:r--,g::r--,g:100:rwx,m::rwx,o::--- (mode then 0670)
FILE_ACL = RsyncAcl(6, 4, 7, 0, (U(1000, 6), U(65534, 4), G(100, 7)))
# dir: access u::rwx,g::r-x,g:1000:r-x,m::r-x,o::r-x; default u::rwx,u:1000:rwx,g::r-x,m::rwx,o::---
DIR_ACL = RsyncAcl(7, 5, 5, 5, (G(1000, 5),))
DIR_DEFAULT = RsyncAcl(7, 5, 7, 0, (U(1000, 7),))
SOURCE = {  # name -> (mode, full access ACL, default ACL), in the client's send order
    ".": (0o40755, fake_perms(0o755), RsyncAcl()),
    "dir": (0o40755, DIR_ACL, DIR_DEFAULT),
    "a.txt": (0o100670, FILE_ACL, None),
    "b.txt": (0o100670, FILE_ACL, None),
    "plain.txt": (0o100640, fake_perms(0o640), None),
    "dir/in.txt": (0o100640, fake_perms(0o640), None),
}


def test_strip_leaves_out_what_the_mode_says():
    assert strip_perms(FILE_ACL, 0o670) == RsyncAcl(None, 4, None, None, FILE_ACL.names)
    assert strip_perms(DIR_ACL, 0o755) == RsyncAcl(None, None, None, None, DIR_ACL.names)
    assert strip_perms(fake_perms(0o640), 0o640) == RsyncAcl()


def test_push_capture_decodes_to_the_source_acls():
    side = client_side("daemon-push-acls_c3.5.0")
    reader = ByteReader(side.data)
    flist, acls = FlistDecoder(flist_options(side.opts)), AclDecoder()
    got = {}
    while (entry := flist.read_entry(reader.read)) is not None:
        got[entry.name.decode()] = (entry.mode, *acls.decode(reader.read, entry.mode, entry.is_dir))
    assert list(got) == list(SOURCE)
    for name, (mode, access, default) in SOURCE.items():
        sent = strip_perms(access, mode)
        if sent.names and sent.mask_obj is None:  # the receiver puts back the mask from the mode
            sent = dataclasses.replace(sent, mask_obj=(mode >> 3) & 7)
        assert got[name] == (mode, sent, default), name


@pytest.mark.parametrize("name", ["daemon-push-acls_c3.5.0", "daemon-pull-acls_c3.5.0"])
def test_encoder_writes_the_blocks_stock_rsync_wrote(name):
    data = client_side(name).data if "push" in name else server_data(name)
    enc, pos = AclEncoder(), 0
    order = list(SOURCE) if "push" in name else _pull_order(data)
    for entry in order:
        mode, access, default = SOURCE[entry]
        block = enc.encode(access, default, mode, is_dir=mode & 0o40000 != 0)
        pos = data.index(block, pos) + len(block)


def _pull_order(data: bytes) -> list[str]:
    side = client_side("daemon-pull-acls_c3.5.0")
    reader, flist, acls, names = ByteReader(data), FlistDecoder(flist_options(side.opts)), AclDecoder(), []
    while (entry := flist.read_entry(reader.read)) is not None:
        acls.decode(reader.read, entry.mode, entry.is_dir)
        names.append(entry.name.decode())
    return names


def test_equal_acls_are_sent_by_reference_per_kind():
    enc = AclEncoder()
    first = enc.encode(FILE_ACL, None, 0o100670, False)
    assert first.startswith(b"\x00\x12") and enc.encode(FILE_ACL, None, 0o100670, False) == b"\x01"
    assert enc.encode(fake_perms(0o755), RsyncAcl(), 0o40755, True) == b"\x00\x00\x00\x00"  # default: own cache


def test_missing_mask_is_computed():
    dec = AclDecoder()
    wire = b"\x00\x10\x01\x83\xe8\x14"  # names only: g:1000:r-x (from the capture's dir entry)
    access, _ = dec.decode(ByteReader(wire).read, 0o40750, False)
    assert access.mask_obj == 5  # the mode's group bits
    default = dec._one(ByteReader(b"\x00\x12\x04\x01\x83\xe8\x0a").read, 1, 0)
    assert default.mask_obj == 2 | 4  # entries' bits | group_obj


perms = st.integers(0, 7)
opt = st.none() | perms
entries = st.lists(st.builds(IdAccess, st.integers(0, 2**32 - 1), perms, st.booleans()), max_size=5)


@given(st.lists(st.tuples(opt, opt, perms, opt, entries, st.booleans()), max_size=6))
def test_round_trip(acls):
    enc, dec = AclEncoder(), AclDecoder()
    for user, group, mask, other, names, is_dir in acls:
        acl = RsyncAcl(user, group, mask, other, tuple(names))
        mode = 0o40000 if is_dir else 0o100000
        wire = enc._one(acl, 0) + (enc._one(acl, 1) if is_dir else b"")
        access, default = dec.decode(ByteReader(wire).read, mode, is_dir)
        assert access.key() == acl.key() and (default is None or default.key() == acl.key())


@given(st.binary(max_size=40))
@example(b"\x05")
@example(b"\x00\x01\x08")
@example(b"\x00\x10\x85\x80\x80\x80\x00")
def test_junk_is_decoded_exactly_or_refused(junk):
    reader = ByteReader(junk)
    try:
        AclDecoder().decode(reader.read, 0o100644, False)
    except ProtocolError:
        return
    assert reader.remaining <= len(junk)
