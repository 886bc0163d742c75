"""One file's data: the streamed literal path equals the reference call sequence, byte for byte."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backupd.protocol.constants import CHUNK_SIZE, FNAMECMP_FNAME, FNAMECMP_FUZZY, FNAMECMP_PARTIAL_DIR
from backupd.protocol.match import literal_calls
from backupd.protocol.sums import Checksum
from backupd.protocol.tokens import make_token_writer
from backupd.roles.sender_data import (
    READ_SIZE,
    SourceFile,
    file_digest,
    open_source,
    send_literal,
    spoil,
    updating_basis_file,
)
from backupd.storage import ModuleTree

CHECKSUM = Checksum("xxh128", 77)


def reference(data: bytes, compression: str | None, start: int, hash_from: int) -> bytes:
    """What match_sums() sends without block sums: literal_calls() through the writer, then the sum."""
    writer = make_token_writer(compression)
    writer.start_file()
    out = b"".join(writer.send(c.literal, c.token) for c in literal_calls(memoryview(data)[start:]))
    hasher = CHECKSUM.file_sum_hasher()
    hasher.update(data[hash_from:])
    return out + hasher.digest()


def streamed(path, compression: str | None, start: int = 0, hash_from: int = 0,
             size: int | None = None) -> tuple[bytes, bool]:
    writer = make_token_writer(compression)
    writer.start_file()
    out: list[bytes] = []
    fd = os.open(path, os.O_RDONLY)
    src = SourceFile(fd, os.fstat(fd).st_size if size is None else size)
    with src:
        ok = send_literal(src, writer, CHECKSUM, out.append, start=start, hash_from=hash_from)
    return b"".join(out), ok


@settings(max_examples=40)
@given(size=st.integers(min_value=0, max_value=3 * CHUNK_SIZE + 5), data=st.data())
@example(size=0, data=None)
@example(size=CHUNK_SIZE, data=None)
@example(size=2 * CHUNK_SIZE, data=None)
def test_literal_stream_equals_the_reference(tmp_path_factory, size, data):
    start = data.draw(st.integers(min_value=0, max_value=size)) if data is not None else 0
    verify = data.draw(st.booleans()) if data is not None else False
    blob = random.Random(size).randbytes(size)
    path = tmp_path_factory.mktemp("f") / "blob"
    path.write_bytes(blob)
    hash_from = 0 if verify else start
    assert streamed(path, None, start, hash_from) == (reference(blob, None, start, hash_from), True)


@pytest.mark.parametrize("compression", [None, "zlib", "zlibx", "zstd", "lz4"])
def test_literal_stream_across_read_buffers(tmp_path, compression):
    blob = random.Random(1).randbytes(2 * READ_SIZE + 3 * CHUNK_SIZE + 17)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    assert streamed(path, compression) == (reference(blob, compression, 0, 0), True)
    exact = blob[: 2 * READ_SIZE]
    path.write_bytes(exact)
    assert streamed(path, compression) == (reference(exact, compression, 0, 0), True)


def test_a_file_that_shrank_gets_a_spoiled_checksum(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 1000)
    out, ok = streamed(path, None, size=5000)     # fstat said 5000, only 1000 are there
    good = reference(b"x" * 1000, None, 0, 0)
    assert not ok and out[-16:] == spoil(good[-16:]) != good[-16:]
    assert spoil(bytes(16)) == bytes(15) + b"\x01"


def test_open_source_is_confined_and_digest_matches(tmp_path):
    root = tmp_path / "mod"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"content")
    os.symlink("f", root / "d" / "ln")
    os.symlink(tmp_path, root / "up")
    os.mkfifo(root / "fifo")
    with ModuleTree(root, module="m") as tree:
        src = open_source(tree, b"d/f")
        assert src is not None and src.size == 7
        src.close()
        assert open_source(tree, b"d/ln") is None        # a symlink is never opened
        assert open_source(tree, b"fifo") is None        # nor a fifo (no blocking open)
        assert open_source(tree, b"d/missing") is None
        with pytest.raises(Exception, match="symlink"):
            open_source(tree, b"up/mod/d/f")
        hasher = CHECKSUM.file_sum_hasher()
        hasher.update(b"content")
        assert file_digest(tree, b"d/f", CHECKSUM) == (hasher.digest(), 7)


@pytest.mark.parametrize(
    ("inplace", "inplace_partial", "fnamecmp_type", "protocol", "backup", "redo", "want"),
    [
        (True, False, FNAMECMP_FNAME, 31, False, False, True),
        (True, False, FNAMECMP_FNAME, 31, True, False, True),       # 29+: --backup does not matter
        (True, False, FNAMECMP_FUZZY, 31, False, False, False),     # a fuzzy basis is another file
        (True, True, FNAMECMP_PARTIAL_DIR, 31, False, False, True),
        (False, True, FNAMECMP_PARTIAL_DIR, 31, False, False, True),  # partial-dir file written in place
        (False, False, FNAMECMP_PARTIAL_DIR, 31, False, False, False),
        (False, True, FNAMECMP_FNAME, 31, False, False, False),
        (True, False, FNAMECMP_FNAME, 28, True, False, False),      # below 29: make_backups > 0
        (True, False, FNAMECMP_FNAME, 28, True, True, True),        # the redo negates make_backups
        (True, False, FNAMECMP_FNAME, 28, False, False, True),
    ],
)
def test_updating_basis_file_follows_send_files(inplace, inplace_partial, fnamecmp_type, protocol, backup,
                                                redo, want):
    assert updating_basis_file(inplace=inplace, inplace_partial=inplace_partial, fnamecmp_type=fnamecmp_type,
                               protocol=protocol, backup=backup, redo=redo) is want
