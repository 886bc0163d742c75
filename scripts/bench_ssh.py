#!/usr/bin/env python3
"""rsync over SSH: backupd's built-in SSH server against OpenSSH's sshd + stock rsync, same run.

Both servers get the same client key, and the client pins one cipher
(``--cipher``, default aes128-gcm@openssh.com) for both. sshd execs the stock
``rsync --server`` into a plain directory; backupd serves a module with
history on (its default). Workloads, in ABBA order, ``--repeats`` times:

- ``big-new``: one file of ``--big-mib`` MiB (random bytes) into an empty dir;
- ``stdlib-new``: a copy of the Python standard library into an empty dir;
- ``stdlib-update``: after touching 1% of its files, the same push with ``--delete``.

Reports median wall times, the ratio backupd/sshd per workload (pair by pair),
throughput, and the peak RSS and PSS summed over each server's process tree
(the daemon and every descendant, sampled at 20 Hz from /proc). Loopback only;
needs root (sshd) and openssh-server. Usage:
``python3 scripts/bench_ssh.py [--repeats 3] [--big-mib 1024] [--tmp DIR]``.
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
SSH_OPTS = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes "
            "-o LogLevel=ERROR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {limit_s} s")


def tree_memory(root_pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``root_pid`` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    members, grew = {root_pid}, True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in members} - members
        members |= new
        grew = bool(new)
    rss = pss = 0
    for pid in members:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


class Server:
    """A server started in its own session; ``url(dest)`` is the rsync destination."""

    def __init__(self, name: str, argv: list[str], port: int, key: Path, cipher: str, dest_root: str) -> None:
        self.name, self.port, self.dest_root = name, port, dest_root
        self.rsh = f"ssh -p {port} -i {key} -c {cipher} {SSH_OPTS}"
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(port)

    def url(self, dest: str) -> str:
        return f"root@127.0.0.1:{self.dest_root}{dest}/"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


def timed_push(server: Server, src: Path, dest: str, *extra: str) -> tuple[float, int, int]:
    """Push ``src/`` to ``dest``: (wall seconds, peak RSS, peak PSS) of the server's tree."""
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss = tree_memory(server.proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    got = subprocess.run(["rsync", "-a", *extra, "-e", server.rsh, f"{src}/", server.url(dest)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if got.returncode:
        raise RuntimeError(f"{server.name}: rsync exited {got.returncode}: {got.stderr.strip()}")
    return wall, peak[0], peak[1]


def touch_some(src: Path, seed: int) -> None:
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    for p in random.Random(seed).sample(files, max(1, len(files) // 100)):
        with open(p, "ab") as f:
            f.write(b"# changed\n")


def start_servers(work: Path, key: Path, cipher: str) -> dict[str, Server]:
    pub = Path(f"{key}.pub").read_text()
    keys = work / "authorized_keys"
    keys.mkdir()
    (keys / "root").write_text(pub)
    plain, module = work / "plain", work / "module"
    plain.mkdir()
    module.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "sshd_host_key")], check=True)
    sshd_port, ssh_port, tcp_port = free_port(), free_port(), free_port()
    (work / "sshd_config").write_text(
        f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {work}/sshd_host_key\n"
        f"AuthorizedKeysFile {keys}/%u\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n")
    (work / "rsyncd.conf").write_text(
        f"ssh port = {ssh_port}\nssh address = 127.0.0.1\nssh host key = {work}/backupd_host_key\n"
        f"ssh authorized keys = {keys}/%u\nreverse lookup = no\n"
        f"[mod]\n    path = {module}\n    read only = no\n    uid = root\n    gid = root\n")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    backupd = [sys.executable, "-m", "backupd", "serve", "--config", str(work / "rsyncd.conf"),
               "--port", str(tcp_port), "--address", "127.0.0.1"]
    return {
        "backupd": Server("backupd", backupd, ssh_port, key, cipher, "mod/"),
        "sshd": Server("sshd", [sshd, "-D", "-e", "-f", str(work / "sshd_config")], sshd_port, key, cipher, f"{plain}/"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--cipher", default="aes128-gcm@openssh.com")
    ap.add_argument("--tmp", default=None, help="where the work dir is made")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ssh-", dir=args.tmp))
    servers: dict[str, Server] = {}
    try:
        key = work / "id_client"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        big = work / "big"
        big.mkdir()
        with open(big / "big.bin", "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(1 << 20))
        stdlib = work / "stdlib"
        shutil.copytree(sysconfig.get_paths()["stdlib"], stdlib, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "site-packages"))
        nfiles = sum(1 for p in stdlib.rglob("*") if p.is_file())
        servers = start_servers(work, key, args.cipher)
        workloads = ("big-new", "stdlib-new", "stdlib-update")
        walls = {(w, n): [] for w in workloads for n in servers}
        ratios: dict[str, list[float]] = {w: [] for w in workloads}
        peaks = {n: [0, 0] for n in servers}
        for rep in range(args.repeats):
            order = ["backupd", "sshd"] if rep % 2 == 0 else ["sshd", "backupd"]
            for workload in workloads:
                if workload == "stdlib-update":
                    touch_some(stdlib, rep)
                got = {}
                for name in order:
                    subprocess.run(["sync"])
                    src, dest = (big, f"big{rep}") if workload == "big-new" else (stdlib, f"lib{rep}")
                    extra = ("--delete",) if workload == "stdlib-update" else ()
                    wall, rss, pss = timed_push(servers[name], src, dest, *extra)
                    got[name] = wall
                    walls[workload, name].append(wall)
                    peaks[name] = [max(peaks[name][0], rss), max(peaks[name][1], pss)]
                ratios[workload].append(got["backupd"] / got["sshd"])
            for root in (work / "plain", work / "module"):
                shutil.rmtree(root / f"big{rep}", ignore_errors=True)
        print(f"rsync -a -e 'ssh -c {args.cipher}', {args.repeats} repeats, ABBA; "
              f"big = {args.big_mib} MiB, stdlib = {nfiles} files")
        for w in workloads:
            b, s = (statistics.median(walls[w, n]) for n in ("backupd", "sshd"))
            rate = "" if w != "big-new" else f"  ({args.big_mib / b:.0f} vs {args.big_mib / s:.0f} MiB/s)"
            ratio = statistics.median(ratios[w])
            print(f"  {w:14s} backupd {b:6.2f} s  sshd+rsync {s:6.2f} s  ratio {ratio:.2f}{rate}")
        for n, (rss, pss) in peaks.items():
            print(f"  server peak {n}: RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
