#!/usr/bin/env python3
"""Push a copy of the Python standard library to backupd and to stock rsyncd, same run.

For each server: a first push into an empty module, then a second push after
touching 1% of the files (new content), in ABBA order, ``--repeats`` times.
Reports the median wall time of each, the ratio backupd/rsyncd, and the peak
RSS summed over each server's process group (sampled at 20 Hz from /proc).
Loopback only. Usage: ``python3 scripts/bench_stdlib.py [--repeats 3]
[--rsync-args=-aAX] [--xattrs-acls]``; ``--xattrs-acls`` gives every tenth file
a ``user.`` xattr and an ACL entry, and every tenth directory a default ACL,
so that ``-aAX`` has something to carry (both servers run as root).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_rss(pgid: int) -> int:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ProcessLookupError, ValueError):
            continue
    return total


class Server:
    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not listen")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


def timed_push(server: Server, src: Path, dest: str, rsync_args: list[str]) -> tuple[float, int]:
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], group_rss(server.proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    start = time.perf_counter()
    rc = subprocess.run(["rsync", *rsync_args, "--delete", f"{src}/", f"rsync://127.0.0.1:{server.port}/mod/{dest}/"],
                        stdout=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    stop.set()
    t.join()
    if rc:
        raise RuntimeError(f"{server.name}: rsync exited {rc}")
    return wall, peak[0]


def touch_some(src: Path, seed: int) -> None:
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    for p in random.Random(seed).sample(files, max(1, len(files) // 100)):
        with open(p, "ab") as f:
            f.write(b"# changed\n")


def decorate(src: Path) -> None:
    """Every tenth file: a user xattr and a named-user ACL entry; every tenth dir: a default ACL."""
    import posix1e

    entries = sorted(p for p in src.rglob("*") if not p.is_symlink())
    for i, p in enumerate(entries):
        if i % 10:
            continue
        os.setxattr(p, "user.bench", f"value {i}".encode())
        acl = posix1e.ACL(text="u::rw-,u:nobody:r--,g::r--,m::r--,o::r--" if p.is_file() else
                          "u::rwx,u:nobody:r-x,g::r-x,m::r-x,o::r-x")
        acl.applyto(str(p))
        if p.is_dir():
            acl.applyto(str(p), posix1e.ACL_TYPE_DEFAULT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rsync-args", default="-a", help="the client's options (default -a), e.g. -aAX")
    ap.add_argument("--xattrs-acls", action="store_true", help="give the tree xattrs and ACLs first")
    args = ap.parse_args()
    rsync_args = args.rsync_args.split()
    work = Path(tempfile.mkdtemp(prefix="bench-stdlib-"))
    try:
        src = work / "src"
        shutil.copytree(sysconfig.get_paths()["stdlib"], src, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "site-packages"))
        if args.xattrs_acls:
            decorate(src)
        nfiles = sum(1 for p in src.rglob("*") if p.is_file())
        servers = {}
        for name in ("backupd", "rsyncd"):
            root = work / name
            root.mkdir()
            port = free_port()
            conf = work / f"{name}.conf"
            conf.write_text(f"use chroot = no\nuid = 0\ngid = 0\n[mod]\n    path = {root}\n    read only = no\n")
            argv = ([sys.executable, "-m", "backupd", "serve", "--config", str(conf), "--port", str(port), "--address", "127.0.0.1"]
                    if name == "backupd" else ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}", "--address=127.0.0.1"])
            servers[name] = Server(name, argv, port)
        results = {n: {"first": [], "update": [], "rss": []} for n in servers}
        for rep in range(args.repeats):
            order = ["backupd", "rsyncd"] if rep % 2 == 0 else ["rsyncd", "backupd"]
            for kind in ("first", "update"):
                if kind == "update":
                    touch_some(src, rep)
                for name in order:
                    subprocess.run(["sync"])
                    wall, rss = timed_push(servers[name], src, f"r{rep}", rsync_args)
                    results[name][kind].append(wall)
                    results[name]["rss"].append(rss)
        for s in servers.values():
            s.stop()
        print(f"stdlib tree: {nfiles} files, rsync {' '.join(rsync_args)} --delete, {args.repeats} repeats "
              "(median wall s, peak RSS MiB)")
        for kind in ("first", "update"):
            b, r = (statistics.median(results[n][kind]) for n in ("backupd", "rsyncd"))
            print(f"  {kind:7s} push: backupd {b:.2f}  rsyncd {r:.2f}  ratio {b / r:.2f}")
        for n in servers:
            print(f"  peak RSS {n}: {max(results[n]['rss']) / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
