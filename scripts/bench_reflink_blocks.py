#!/usr/bin/env python3
"""Disk blocks a delta push writes on a reflink file system: stock rsyncd against backupd.

For each server in turn (``--repeats`` rounds): a fresh module on ``--fs``
(an XFS made with ``-m reflink=1``, or btrfs), the old version of a file
copied in as a full copy (no shared extents), ``sync``, then one push of the
new version with the stock client (``rsync -a``). Reports the push's wall
time, the bytes written to the block device under ``--fs`` during it
(``/sys/block/DEV/stat``, after ``sync``), how much the file system's used
space grew (statvfs), the module's unique physical extents afterwards
(FIEMAP through ``filefrag -v``, an extent shared by two files counted once)
and the literal data of ``--stats``.

The old and new versions default to the bench harness's delta data set
(``../shared/bench/run.py --data-dir DIR --keep-data``: ``DIR/delta/old`` and
``DIR/delta/new``, 512 MiB with 1% of its blocks changed). Loopback only;
needs root (the modules are written as uid 0), rsync and e2fsprogs'
filefrag. Usage:
``python3 scripts/bench_reflink_blocks.py --fs /mnt/xfs --data /tmp/benchdata/delta``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

MiB = 1 << 20
BLOCK = 4096


def block_device(fs: Path) -> str:
    """Name of the block device mounted at ``fs`` (``loop0``), for /sys/block."""
    source = subprocess.run(["findmnt", "-no", "SOURCE", str(fs)], capture_output=True, text=True, check=True)
    return Path(source.stdout.strip()).resolve().name


def disk_state(fs: Path, dev: str) -> tuple[int, int]:
    """After one sync: (bytes used on the file system at ``fs``, bytes written so far to ``dev``).

    Written bytes are the device's write sectors (512 bytes each) from /sys/block/DEV/stat.
    """
    os.sync()
    st = os.statvfs(fs)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, int(Path(f"/sys/block/{dev}/stat").read_text().split()[6]) * 512


def unique_extent_bytes(root: Path) -> int:
    """Bytes of the distinct physical extents of every regular file under ``root``."""
    ranges = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        out = subprocess.run(["filefrag", "-v", f"-b{BLOCK}", str(path)], capture_output=True, text=True).stdout
        for m in re.finditer(r"^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):", out, re.M):
            ranges.append((int(m.group(1)), int(m.group(2)) + 1))
    total, end = 0, -1
    for start, stop in sorted(ranges):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total * BLOCK


def start_rsyncd(work: Path, module: Path, port: int) -> subprocess.Popen:
    """Stock ``rsync --daemon`` serving ``module`` as ``bench`` on 127.0.0.1:``port``."""
    conf = work / "rsyncd.conf"
    conf.write_text(f"use chroot = no\nnumeric ids = yes\n[bench]\npath = {module}\nread only = no\nuid = 0\ngid = 0\n")
    return subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                             "--address=127.0.0.1"])


def start_backupd(work: Path, module: Path, port: int, backupd: str) -> subprocess.Popen:
    """``backupd serve`` (history on, its default) serving ``module`` as ``bench`` on 127.0.0.1:``port``."""
    conf = work / "backupd.yaml"
    conf.write_text(f'global: {{address: "127.0.0.1", port: {port}, use_chroot: false, reverse_lookup: false}}\n'
                    f'modules:\n  bench: {{path: "{module}", read_only: false, uid: 0, gid: 0, numeric_ids: true}}\n')
    return subprocess.Popen([backupd, "serve", "--config", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=(work / "backupd.err").open("w"))


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Wait until something listens on ``port`` (read from /proc/net/tcp, no probe connection)."""
    deadline = time.monotonic() + timeout
    want = f":{port:04X} "
    while time.monotonic() < deadline:
        if any(want in line and line.split()[3] == "0A" for line in Path("/proc/net/tcp").read_text().splitlines()[1:]):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def one_push(label: str, start, fs: Path, old: Path, new_dir: Path, port: int) -> str:
    """One measured delta push to a fresh module of the server ``start`` makes; a Markdown table row."""
    work = fs / f"reflink-bench-{label}"
    shutil.rmtree(work, ignore_errors=True)
    module = work / "module"
    (module / "r").mkdir(parents=True)
    proc = start(work, module, port)
    try:
        wait_listening(port)
        shutil.copy2(old, module / "r" / old.name)
        dev = block_device(fs)
        used0, written0 = disk_state(fs, dev)
        t = time.perf_counter()
        done = subprocess.run(["rsync", "-a", "--stats", "./", f"rsync://127.0.0.1:{port}/bench/r/"],
                              cwd=new_dir, capture_output=True, text=True)
        wall = time.perf_counter() - t
        used1, written1 = disk_state(fs, dev)
        grew, wrote = used1 - used0, written1 - written0
        literal = re.search(r"Literal data: ([\d,]+)", done.stdout)
        files = sorted(str(p.relative_to(module)) for p in module.rglob("*") if p.is_file())
        extents = unique_extent_bytes(module) / MiB
        return (f"| {label} | {done.returncode} | {wall:.2f} | {wrote / MiB:.1f} | {grew / MiB:.1f} | "
                f"{extents:.1f} | {literal.group(1) if literal else '?'} | {', '.join(files)} |")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    """Parse the options, run ``--repeats`` rounds of both servers, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fs", type=Path, required=True, help="mount point of the reflink file system")
    ap.add_argument("--data", type=Path, default=Path("/tmp/benchdata/delta"), help="dir with old/ and new/")
    ap.add_argument("--backupd", default=shutil.which("backupd") or "backupd")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--port", type=int, default=47001)
    args = ap.parse_args()
    old = next((args.data / "old").iterdir())
    servers = [("rsyncd", start_rsyncd),
               ("backupd", lambda w, m, p: start_backupd(w, m, p, args.backupd))]
    print("| server | rc | wall s | written to device MiB | fs grew MiB | module unique extents MiB"
          " | literal bytes | files |")
    print("|---|---|---|---|---|---|---|---|")
    for _ in range(args.repeats):
        for label, start in servers:
            print(one_push(label, start, args.fs, old, args.data / "new", args.port), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
