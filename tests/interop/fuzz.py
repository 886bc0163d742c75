"""A bounded mutation fuzzer over the recorded client streams (issue 15).

Seeds are the client->server bytes of the captures in ``tests/data/captures``
(``daemon-*.c2s`` whole; ``b-*.bin`` their ``C`` records joined). Each
session sends one mutated seed to a backupd daemon over 127.0.0.1, half-closes,
reads until the server closes or a per-session deadline passes, and never
waits on anything else. Deterministic: session ``i`` of run ``seed`` is
always the same bytes.

``python -m tests.interop.fuzz --port N --sessions 24000`` runs it against a
server started by hand; ``test_fuzz_captures.py`` runs 2,000 sessions in CI.
"""

from __future__ import annotations

import argparse
import random
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"
# Values that hit length and index checks: 0, -1, sign edges, huge counts.
_INTERESTING32 = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                  0x80000000, 0xFFFFFFFF, 0x00FFFFFF, 0x04000000)
_READ_CHUNK = 1 << 16



def client_records(path: Path) -> list[bytes]:
    """The client->server payloads of a ``b-*.bin`` capture (``b-README.md`` record format)."""
    data, pos, out = path.read_bytes(), 0, []
    while pos + 13 <= len(data):
        direction, _t, n = struct.unpack_from("<cdI", data, pos)
        pos += 13
        if direction == b"C":
            out.append(data[pos : pos + n])
        pos += n
    return out

def load_seeds(folder: Path = CAPTURES) -> list[bytes]:
    """The client streams of every capture in ``folder``, sorted by file name.

    ``*.bin`` records: 1 direction byte, float64 time, uint32 length,
    payload (tests/data/captures/b-README.md); only ``C`` payloads are kept.
    """
    seeds = [p.read_bytes() for p in sorted(folder.glob("daemon-*.c2s"))]
    for path in sorted(folder.glob("b-*.bin")):
        seeds.append(b"".join(client_records(path)))
    return [s for s in seeds if s]


def _greeting_end(data: bytes) -> int:
    """Offset just past the greeting and module lines (kept intact more often)."""
    first = data.find(b"\n")
    second = data.find(b"\n", first + 1) if first >= 0 else -1
    return second + 1 if second >= 0 else 0


def mutate(seed: bytes, other: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``seed``; ``other`` is spliced in by one of them.

    Edits: flip a bit, set a byte, write an interesting int32 (little-endian),
    insert random bytes, delete or duplicate a run, splice a piece of
    ``other``, truncate. With probability 0.8 the greeting and module lines
    stay as they are, so most sessions reach the transfer.
    """
    data = bytearray(seed)
    low = _greeting_end(seed) if rng.random() < 0.8 else 0
    for _ in range(rng.randint(1, 4)):
        if len(data) <= low:
            data += rng.randbytes(rng.randint(1, 16))
            continue
        at = rng.randrange(low, len(data))
        op = rng.randrange(8)
        if op == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at] = rng.randrange(256)
        elif op == 2:
            data[at : at + 4] = struct.pack("<I", rng.choice(_INTERESTING32))
        elif op == 3:
            data[at:at] = rng.randbytes(rng.randint(1, 32))
        elif op == 4:
            del data[at : at + rng.randint(1, 64)]
        elif op == 5:
            n = rng.randint(1, 256)
            data[at:at] = data[at : at + n]
        elif op == 6 and other:
            start = rng.randrange(len(other))
            data[at:at] = other[start : start + rng.randint(1, 512)]
        else:
            del data[at:]
    return bytes(data)


def sessions(seeds: list[bytes], count: int, seed: int) -> Iterator[bytes]:
    """``count`` mutated streams, round robin over ``seeds``; deterministic in ``seed``."""
    rng = random.Random(seed)
    for i in range(count):
        yield mutate(seeds[i % len(seeds)], rng.choice(seeds), rng)


def replay(port: int, data: bytes, deadline_s: float) -> bool:
    """Send ``data`` to 127.0.0.1:``port``, half-close, read until EOF.

    Sends and reads at once (a server answering before it has read all
    must not block us). Returns True if the server closed in time, False
    if the deadline came first (the socket is closed either way).
    """
    end = time.monotonic() + deadline_s
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    out = memoryview(data)
    try:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while (left := end - time.monotonic()) > 0:
            for _key, events in sel.select(left):
                if events & selectors.EVENT_READ:
                    try:
                        if not sock.recv(_READ_CHUNK):
                            return True
                    except ConnectionError:
                        return True
                if events & selectors.EVENT_WRITE and out is not None:
                    try:
                        out = out[sock.send(out[:_READ_CHUNK]) :]
                    except ConnectionError:
                        out = b""
                    if not out:
                        out = None
                        _half_close(sock)
                        sel.modify(sock, selectors.EVENT_READ)
        return False
    finally:
        sel.close()
        sock.close()


def _half_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server closed first


@dataclass
class FuzzResult:
    """Counts of one run: sessions sent, and those the server did not close in time."""

    sent: int = 0
    timed_out: list[int] = field(default_factory=list)
    refused: int = 0  # connect failed (the listener was not there)


def run(port: int, count: int, *, seed: int = 15, parallel: int = 4, deadline_s: float = 10.0,
        seeds: list[bytes] | None = None) -> FuzzResult:
    """Fuzz ``count`` sessions, ``parallel`` at a time; bounded by ``count`` x ``deadline_s``."""
    seeds = seeds or load_seeds()
    result = FuzzResult()

    def one(item: tuple[int, bytes]) -> None:
        i, data = item
        try:
            closed = replay(port, data, deadline_s)
        except OSError:
            result.refused += 1
            return
        result.sent += 1
        if not closed:
            result.timed_out.append(i)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, enumerate(sessions(seeds, count, seed))))
    return result


def main() -> None:
    """Command line: fuzz a running server."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args()
    started = time.monotonic()
    res = run(args.port, args.sessions, seed=args.seed, parallel=args.parallel)
    print(f"sent {res.sent}, refused {res.refused}, not closed in time {len(res.timed_out)} "
          f"{res.timed_out[:20]}, {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
