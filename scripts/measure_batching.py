#!/usr/bin/env python3
"""Measure the pusher's batching: N files changed in one window, against one rsync per file.

For each target server (stock rsyncd and backupd, on 127.0.0.1):

1. batched: ``backupd watch`` runs with a window of ``--delay`` seconds; N
   files are written in one burst; we wait until the target holds all of
   them and report the rsync runs (from the pusher's log), the seconds rsync
   took, and the wall time from the first write to the last file arriving.
2. per file: what the script pushers do, ``rsync -a -R <file> rsync://...``
   once per changed file, in sequence, over a sample of ``--per-file-sample``
   files (0: all N), extrapolated linearly to N.

Usage: python scripts/measure_batching.py [--files 10000] [--delay 3] [--per-file-sample 1000]
Everything stays on loopback; temporary files go to a temp dir that is removed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSYNC = "/usr/bin/rsync"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 20) -> None:
    """Wait until something listens on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not start")


def start_server(kind: str, work: Path, module: Path) -> tuple[subprocess.Popen, int]:
    """Start a stock rsyncd or backupd with one writable module ``mod``."""
    port = free_port()
    conf = work / f"{kind}.conf"
    own = f"uid = {os.getuid()}\n    gid = {os.getgid()}\n" if kind == "rsyncd" and os.geteuid() == 0 else ""
    conf.write_text(f"port = {port}\nuse chroot = no\nreverse lookup = no\nlog file = {work}/{kind}.log\n"
                    f"[mod]\n    path = {module}\n    read only = no\n    numeric ids = yes\n{own}")
    if kind == "rsyncd":
        argv = [RSYNC, "--daemon", "--no-detach", f"--config={conf}", f"--port={port}", "--address=127.0.0.1"]
    else:
        argv = [sys.executable, "-m", "backupd", "serve", "--config", str(conf), "--port", str(port),
                "--address", "127.0.0.1"]
    log = open(work / f"{kind}.out", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, a server's process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def make_files(src: Path, n: int, size: int) -> None:
    """Write ``n`` files of ``size`` bytes, 500 per directory."""
    for i in range(n):
        d = src / f"d{i // 500:03}"
        if i % 500 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05}").write_bytes(b"y" * size)


def sizes(top: Path) -> list[int]:
    """Sizes of the files under ``top`` (history and rsync's temp files left out)."""
    out = []
    for d, _, files in os.walk(top):
        for f in files if "history-backup" not in d else ():
            try:
                out.append(os.lstat(os.path.join(d, f)).st_size)
            except FileNotFoundError:
                pass
    return out


def batched(work: Path, port: int, module: Path, n: int, delay_s: float) -> dict:
    """N files exist on both sides; all N change in one burst while ``backupd watch`` runs."""
    src = work / f"src-batched-{port}"
    make_files(src, n, 100)
    config = work / "pusher.yaml"
    config.write_text(f"state_dir: {work}/state-{port}\ndelay_s: {delay_s}\n"
                      f"sources:\n  - path: {src}\n    targets: [rsync://127.0.0.1:{port}/mod]\n")
    log = work / f"watch-{port}.log"
    with open(log, "wb") as out:
        watch = subprocess.Popen([sys.executable, "-m", "backupd", "watch", "--config", str(config)], cwd=ROOT,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while sizes(module).count(100) < n and time.monotonic() < deadline:  # the initial full sync
        time.sleep(0.5)
    time.sleep(1)
    start = time.monotonic()
    make_files(src, n, 200)  # every file changes
    written = time.monotonic() - start
    while sizes(module).count(200) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    wall = time.monotonic() - start
    time.sleep(delay_s + 1)
    stop(watch)
    runs = re.findall(r"batch to \S+: (\d+) paths .*?, ([\d.]+) s, exit (\d+)", log.read_text())
    return {"changed_on_target": sizes(module).count(200), "write_s": round(written, 2),
            "wall_s": round(wall, 2), "runs": len(runs), "rsync_s": round(sum(float(r[1]) for r in runs), 2),
            "paths_per_run": [int(r[0]) for r in runs], "exits": sorted({int(r[2]) for r in runs})}


def per_file(work: Path, port: int, n: int, sample: int) -> dict:
    """The script pushers' way: one ``rsync -a -R FILE`` per changed file, in sequence."""
    src = work / f"src-per-file-{port}"
    count = n if sample <= 0 else min(sample, n)
    make_files(src, count, 100)
    subprocess.run([RSYNC, "-a", f"{src}/", f"rsync://127.0.0.1:{port}/mod/"], check=True)
    make_files(src, count, 200)
    start = time.monotonic()
    failed = 0
    for i in range(count):
        rel = f"d{i // 500:03}/f{i:05}"
        done = subprocess.run([RSYNC, "-a", "-R", rel, f"rsync://127.0.0.1:{port}/mod/"], cwd=src,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        failed += done.returncode not in (0, 24)
    took = time.monotonic() - start
    return {"runs_measured": count, "seconds_measured": round(took, 2), "failed": failed, "runs_for_n": n,
            "seconds_for_n": round(took / count * n, 1), "extrapolated": count < n}


def main() -> None:
    """Run both modes against each server and print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--delay", type=float, default=3.0, help="the pusher's window, seconds")
    parser.add_argument("--per-file-sample", type=int, default=1000, help="0: run all N one by one")
    parser.add_argument("--servers", default="rsyncd,backupd")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backupd-measure-"))
    try:
        for kind in args.servers.split(","):
            for mode in ("batched", "per-file"):
                module = work / f"mod-{kind}-{mode}"
                module.mkdir()
                proc, port = start_server(kind, work, module)
                try:
                    if mode == "batched":
                        result = batched(work, port, module, args.files, args.delay)
                    else:
                        result = per_file(work, port, args.files, args.per_file_sample)
                finally:
                    stop(proc)
                print(f"{kind:8} {mode:9} {result}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
