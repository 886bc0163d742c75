"""Crafted client streams: a recorded push with a few bytes changed, replayed raw.

A capture's client records (tests/data/captures/b-*.bin) replayed as they are
make the same push again (the whole-file sums do not depend on the seed for
xxh128); :func:`edit` changes one byte string in them, fixing the length of
the multiplexed frame that holds it, so names, arguments and sums can be
forged where a stock client would never send them.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.interop.fuzz import CAPTURES, client_records


def records(name: str) -> list[bytes]:
    """The client->server payloads of capture ``name`` (``b-README.md`` record format)."""
    return client_records(CAPTURES / name)


def frame(payload: bytes) -> bytes:
    """One MSG_DATA frame (rsync io.c: 3-byte length, tag MPLEX_BASE + 0)."""
    return len(payload).to_bytes(3, "little") + b"\x07" + payload


def edit(recs: list[bytes], old: bytes, new: bytes) -> list[bytes]:
    """``recs`` with the first ``old`` replaced by ``new``; a record that is one frame is re-framed."""
    out, done = [], False
    for rec in recs:
        if not done and old in rec:
            done = True
            if len(rec) > 4 and rec[3] == 7 and int.from_bytes(rec[:3], "little") == len(rec) - 4:
                rec = frame(rec[4:].replace(old, new, 1))
            else:
                rec = rec.replace(old, new, 1)
        out.append(rec)
    if not done:
        raise ValueError(f"{old!r} is not in the capture")
    return out


def talk(port: int, recs: list[bytes], waits: dict[int, bytes] | None = None, timeout_s: float = 10.0) -> bytes:
    """Send ``recs`` to 127.0.0.1:``port``, half-close, return all the server sent (bounded).

    ``waits`` maps a record's index to bytes the server must have sent
    before that record goes (the generator's request for a file: a client
    sends file data only once asked); each wait and the whole talk end at
    ``timeout_s``.
    """
    end = time.monotonic() + timeout_s
    out = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            for i, rec in enumerate(recs):
                while (want := (waits or {}).get(i)) and want not in out and time.monotonic() < end:
                    if not (data := sock.recv(1 << 16)):
                        break
                    out += data
                sock.sendall(rec)
            sock.shutdown(socket.SHUT_WR)
            while time.monotonic() < end and (data := sock.recv(1 << 16)):
                out += data
        except OSError:
            pass  # the server reset the connection after its answer
    return bytes(out)


def wait_for(path: Path, text: str, start: int, timeout_s: float = 10.0) -> str:
    """The log at ``path`` from byte ``start`` once it holds ``text`` (or after ``timeout_s``)."""
    end = time.monotonic() + timeout_s
    while True:
        got = path.read_bytes()[start:].decode("utf-8", "replace")
        if text in got or time.monotonic() > end:
            return got
        time.sleep(0.05)
