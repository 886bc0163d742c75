"""rsync over SSH (issue 11): the real OpenSSH client and both stock rsync clients against
backupd's built-in SSH server, in remote-shell form (``user@host:mod/path``) and
daemon-over-SSH form (``user@host::mod/path``).

Refusals are compared with what stock rsyncd says for the same access rules:
over TCP for the remote-shell form, and for the daemon form with stock
``rsync --server --daemon`` run through a remote-shell wrapper (the same
thing sshd would exec).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import RsyncClient, assert_trees_equal, free_port, make_tree, render_rsyncd_conf, write_secrets
from tests.interop.conftest import HISTORY, T0, copy_tree, local_days, parse_stats, set_mtime, show

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (apt-get install openssh-client)"),
]

MODULE = "mod"
SECRETS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}
AUTH_USERS = "alice, bob:ro"
FORMS = ("shell", "daemon")


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


@dataclass
class SshServer:
    """backupd with module ``mod`` (auth users alice, bob:ro), SSH on ``ssh_port``."""

    work: Path
    module: Path
    port: int
    ssh_port: int
    keys: dict[str, Path]
    conf: Path
    log: object = field(default=None)  # the ServerProcess

    def rsh(self, key: str) -> str:
        return (f"ssh -p {self.ssh_port} -i {self.keys[key]} -o StrictHostKeyChecking=no "
                "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR")

    def ssh(self, user: str, *command: str, key: str | None = None, extra: tuple[str, ...] = (), timeout=30):
        argv = [*self.rsh(key or user).split(), *extra, f"{user}@127.0.0.1", *command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def url(self, form: str, user: str, path: str = "") -> str:
        sep = ":" if form == "shell" else "::"
        return f"{user}@127.0.0.1{sep}{MODULE}/{path}"

    def rsync(self, client: RsyncClient, form: str, user: str, *args, key: str | None = None, **kw):
        """``rsync -e SSH <args>``; the daemon form gets the user's password as RSYNC_PASSWORD."""
        password = SECRETS.get(user) if form == "daemon" else None
        return client.run("-e", self.rsh(key or user), *args, password=password, timeout=60, **kw)


def _wait_port(port: int, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"SSH port {port} not listening after {limit_s} s")


@pytest.fixture
def ssh_server(backupd_server, tmp_path_factory):
    """Factory: ``ssh_server(params=None, global_params=None) -> SshServer``."""

    def start(params: dict | None = None, global_params: dict | None = None) -> SshServer:
        work = tmp_path_factory.mktemp("ssh")
        module = work / MODULE
        module.mkdir()
        keys_dir = work / "authorized_keys"
        keys_dir.mkdir()
        keys = {}
        for user in ("alice", "bob", "carol", "mallory"):
            keys[user] = keygen(work / f"id_{user}")
            if user != "mallory":  # mallory's key is in nobody's authorized_keys
                (keys_dir / user).write_text(Path(f"{keys[user]}.pub").read_text())
        port, ssh_port = free_port(), free_port()
        glob = {"reverse lookup": False, "ssh port": ssh_port, "ssh host key": work / "host_key",
                "ssh authorized keys": keys_dir / "%u", **(global_params or {})}
        mod = {"path": module, "read only": False, "auth users": AUTH_USERS,
               "secrets file": write_secrets(work / "secrets", SECRETS), "munge symlinks": False,
               "numeric ids": True, **(params or {})}
        conf = work / "rsyncd.conf"
        conf.write_text(render_rsyncd_conf(port, glob, {MODULE: mod}))
        server = backupd_server(conf, port=port)
        _wait_port(ssh_port)
        return SshServer(work, module, port, ssh_port, keys, conf, server)

    return start


def _today(since: float) -> str:
    days = local_days(since)
    assert len(days) == 1, days
    return days.pop()


SEED = {
    "keep.txt": "unchanged\n",
    "change.txt": "first version\n",
    "gone.txt": "deleted later\n",
    "dir": {"nested.bin": b"\x00\x01" * 5000, "sub": {"deep.txt": "deep\n"}},
}


@pytest.mark.parametrize("form", FORMS)
def test_push_then_delete_push_keeps_history(ssh_server, rsync_client, stdlib_trees, tmp_path, form):
    server = ssh_server()
    src = copy_tree(stdlib_trees["subset"], tmp_path / "src")
    make_tree(src, SEED)
    for path in sorted(src.rglob("*"), reverse=True) + [src]:  # whole seconds, as rsync compares them
        set_mtime(path, T0)
    since = time.time()
    assert_ok(server.rsync(rsync_client, form, "alice", "-a", f"{src}/", server.url(form, "alice")))
    assert_trees_equal(src, server.module, mtime_precision_ns=rsync_client.mtime_precision_ns)

    (src / "change.txt").write_text("second version, longer\n")
    (src / "gone.txt").unlink()
    shutil.rmtree(src / "json")
    set_mtime(src, T0 + 100)  # rsync compares mtimes in whole seconds: this push may run in the same second
    assert_ok(server.rsync(rsync_client, form, "alice", "-a", "--delete", f"{src}/", server.url(form, "alice")))
    assert_trees_equal(src, server.module, mtime_precision_ns=rsync_client.mtime_precision_ns)
    day = server.module / HISTORY / _today(since)
    assert (day / "change.txt").read_text() == "first version\n"
    assert (day / "gone.txt").read_text() == "deleted later\n"
    assert (day / "json" / "decoder.py").read_bytes() == (stdlib_trees["subset"] / "json" / "decoder.py").read_bytes()


def assert_ok(done: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert done.returncode == code, show(done)
    return done


@pytest.mark.parametrize("form", FORMS)
def test_pull_and_list_only(ssh_server, rsync_client, tmp_path, form):
    server = ssh_server()
    make_tree(server.module, {"a.txt": "alpha\n", "d": {"b.txt": "beta\n"}})
    os.chmod(server.module, 0o755)
    for path in (server.module / "d" / "b.txt", server.module / "a.txt", server.module / "d", server.module):
        set_mtime(path, T0)
    listing = assert_ok(server.rsync(rsync_client, form, "bob", "--list-only", server.url(form, "bob")))
    names = sorted(line.split()[-1] for line in listing.stdout.splitlines() if line.strip())
    assert names == [".", "a.txt", "d"], listing.stdout
    dst = tmp_path / "dst"
    assert_ok(server.rsync(rsync_client, form, "bob", "-a", server.url(form, "bob"), f"{dst}/"))
    assert_trees_equal(server.module, dst, mtime_precision_ns=rsync_client.mtime_precision_ns)


@pytest.mark.parametrize("protocol", ["29", "28", "27"])
@pytest.mark.parametrize("form", FORMS)
def test_old_protocols_push_delta_and_pull(ssh_server, rsync_client, tmp_path, form, protocol):
    """An old client over SSH: the same legacy codecs as over TCP (session.setup), both forms."""
    server = ssh_server()
    src = tmp_path / "src"
    make_tree(src, {"a.txt": "alpha\n", "d": {"big.bin": bytes(range(256)) * 400}})
    for path in (src / "a.txt", src / "d" / "big.bin", src / "d", src):
        set_mtime(path, T0)
    proto = f"--protocol={protocol}"
    assert_ok(server.rsync(rsync_client, form, "alice", proto, "-a", f"{src}/", server.url(form, "alice")))
    assert_trees_equal(src, server.module, mtime_precision_ns=10**9)
    (src / "d" / "big.bin").write_bytes(bytes(range(256)) * 200 + b"changed" + bytes(range(256)) * 200)
    set_mtime(src / "d" / "big.bin", T0 + 10)
    set_mtime(src / "d", T0)
    done = assert_ok(server.rsync(rsync_client, form, "alice", proto, "-a", "--stats", f"{src}/",
                                  server.url(form, "alice")))
    assert "Matched data: 0 bytes" not in done.stdout, done.stdout
    assert_trees_equal(src, server.module, mtime_precision_ns=10**9)
    dst = tmp_path / "dst"
    assert_ok(server.rsync(rsync_client, form, "bob", proto, "-a", server.url(form, "bob"), f"{dst}/"))
    assert (dst / "d" / "big.bin").read_bytes() == (src / "d" / "big.bin").read_bytes()


def test_daemon_form_lists_modules(ssh_server, rsync_clients):
    server = ssh_server({"comment": "the module"})
    client = rsync_clients["3.5.0"]
    done = assert_ok(client.run("-e", server.rsh("alice"), "alice@127.0.0.1::", timeout=30))
    assert done.stdout.split() == [MODULE, "the", "module"], show(done)


def test_delta_repush_of_a_large_file_sends_mostly_matched_data(ssh_server, rsync_clients, tmp_path):
    server = ssh_server()
    client = rsync_clients["3.5.0"]
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    assert_ok(server.rsync(client, "shell", "alice", "-a", f"{src}/", server.url("shell", "alice")))
    with open(big, "r+b") as f:
        f.seek(4 << 20)
        f.write(b"changed in the middle")
    set_mtime(big, T0 + 100)  # the same size: only another mtime (in whole seconds) makes rsync look
    done = assert_ok(server.rsync(client, "shell", "alice", "-a", "--no-whole-file", "--stats", f"{src}/",
                                  server.url("shell", "alice")))
    stats = parse_stats(done.stdout)
    assert stats["Matched data"] > 7 << 20, done.stdout
    assert stats["Literal data"] < 1 << 20, done.stdout
    assert (server.module / "big.bin").read_bytes() == big.read_bytes()


# ---------------------------------------------------------------- refusals, compared with stock rsyncd


def _error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith(("@ERROR", "ERROR"))]


def _daemon_wrapper(tmp_path: Path, conf: Path, rsync: str = "/usr/bin/rsync") -> str:
    """A remote shell that runs stock ``rsync --server --daemon`` with ``conf``, as sshd would."""
    script = tmp_path / "stock-daemon-rsh"
    script.write_text(f"#!/bin/sh\nexec {rsync} --server --daemon --config={conf} .\n")
    script.chmod(0o755)
    return str(script)


def _stock_conf(tmp_path: Path, server: SshServer, params: dict | None = None) -> Path:
    module = tmp_path / "stock-mod"
    module.mkdir(exist_ok=True)
    mod = {"path": module, "read only": False, "auth users": AUTH_USERS, "munge symlinks": False,
           "numeric ids": True, "secrets file": server.work / "secrets", **(params or {})}
    if os.geteuid() == 0:
        mod.update(uid=os.getuid(), gid=os.getgid())
    conf = tmp_path / "stock-rsyncd.conf"
    conf.write_text(render_rsyncd_conf(free_port(), {"use chroot": False, "reverse lookup": False,
                                                     "log file": tmp_path / "stock.log"}, {MODULE: mod}))
    return conf


REFUSALS = {  # name -> (user, key, push?); each refused by the module's rules
    "user-not-in-auth-users": ("carol", "carol", True),
    "ro-user-pushing": ("bob", "bob", True),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_access_refusals_match_stock_rsyncd(ssh_server, stock_rsyncd, rsync_clients, tmp_path, case):
    user, key, _ = REFUSALS[case]
    client = rsync_clients["3.5.0"]
    server = ssh_server()
    src = tmp_path / "src"
    make_tree(src, {"f.txt": "f\n"})
    # remote-shell form against the same rules over TCP at stock rsyncd
    stock_mod = tmp_path / "tcp-mod"
    stock_mod.mkdir()
    stock = stock_rsyncd({MODULE: {"path": stock_mod, "read only": False, "auth users": AUTH_USERS}},
                         secrets=SECRETS)
    want = client.run("-a", f"{src}/", stock.url(MODULE, user=user), password=SECRETS[user], timeout=30)
    got = server.rsync(client, "shell", user, "-a", f"{src}/", server.url("shell", user), key=key)
    assert (got.returncode, _error_lines(got)) == (want.returncode, _error_lines(want)), show(got) + show(want)
    # daemon form against stock rsync --server --daemon behind a remote shell
    wrapper = _daemon_wrapper(tmp_path, _stock_conf(tmp_path, server))
    want = client.run("-a", "-e", wrapper, f"{src}/", f"{user}@127.0.0.1::{MODULE}/", password=SECRETS[user],
                      timeout=30)
    got = server.rsync(client, "daemon", user, "-a", f"{src}/", server.url("daemon", user), key=key)
    assert (got.returncode, _error_lines(got)) == (want.returncode, _error_lines(want)), show(got) + show(want)
    assert want.returncode != 0
    assert os.listdir(server.module) == []


def test_daemon_form_wrong_password_matches_stock(ssh_server, rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    server = ssh_server()
    src = tmp_path / "src"
    make_tree(src, {"f.txt": "f\n"})
    wrapper = _daemon_wrapper(tmp_path, _stock_conf(tmp_path, server))
    want = client.run("-a", "-e", wrapper, f"{src}/", f"alice@127.0.0.1::{MODULE}/", password="nope", timeout=30)
    got = client.run("-a", "-e", server.rsh("alice"), f"{src}/", server.url("daemon", "alice"), password="nope",
                     timeout=30)
    assert (got.returncode, _error_lines(got)) == (want.returncode, _error_lines(want)), show(got) + show(want)
    assert got.returncode == 5 and os.listdir(server.module) == []


@pytest.mark.parametrize("form", FORMS)
def test_wrong_key_is_refused_by_ssh(ssh_server, rsync_clients, tmp_path, form):
    client = rsync_clients["3.5.0"]
    server = ssh_server()
    src = tmp_path / "src"
    make_tree(src, {"f.txt": "f\n"})
    started = time.monotonic()
    got = server.rsync(client, form, "alice", "-a", f"{src}/", server.url(form, "alice"), key="mallory")
    # the login never reaches rsync, as with sshd: ssh's own exit 255 in remote-shell form; in daemon
    # form the client reports the missing greeting with exit 5, as a daemon's refused login over TCP
    assert got.returncode == {"shell": 255, "daemon": 5}[form], show(got)
    assert "Permission denied (publickey)" in got.stderr, show(got)
    assert time.monotonic() - started >= 1.0  # a failed login waits before it is refused
    assert os.listdir(server.module) == []


def test_denied_host_is_cut_before_login(ssh_server, stock_rsyncd, rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    server = ssh_server({"hosts deny": "127.0.0.1"})
    src = tmp_path / "src"
    make_tree(src, {"f.txt": "f\n"})
    got = server.rsync(client, "shell", "alice", "-a", f"{src}/", server.url("shell", "alice"))
    assert got.returncode != 0, show(got)
    assert "access denied from 127.0.0.1" in got.stderr, show(got)
    assert "SSH login" not in server.log.log()
    assert os.listdir(server.module) == []


def test_host_denied_for_one_module_gets_the_daemon_refusal(ssh_server, stock_rsyncd, rsync_clients, tmp_path):
    """A host some module admits reaches the session, which refuses the denied module as rsyncd does."""
    client = rsync_clients["3.5.0"]
    server = ssh_server({"hosts deny": "127.0.0.1"})
    open_mod = tmp_path / "open"
    open_mod.mkdir()
    with server.conf.open("a") as f:
        f.write(f"\n[open]\n    path = {open_mod}\n")
    time.sleep(1.0)  # the listener installs its SIGHUP handler just after it starts listening
    os.kill(server.log.proc.pid, signal.SIGHUP)  # both listeners re-read the file
    for _ in range(100):
        if "SSH listener reloaded" in server.log.log():
            break
        time.sleep(0.05)
    src = tmp_path / "src"
    make_tree(src, {"f.txt": "f\n"})
    stock_mod = tmp_path / "tcp-mod"
    stock_mod.mkdir()
    stock = stock_rsyncd({MODULE: {"path": stock_mod, "read only": False, "hosts deny": "127.0.0.1"},
                          "open": {"path": open_mod}})
    want = client.run("-a", f"{src}/", stock.url(MODULE), timeout=30)
    got = server.rsync(client, "shell", "alice", "-a", f"{src}/", server.url("shell", "alice"))
    norm = [line.replace("UNDETERMINED", "NAME").replace("localhost", "NAME") for line in _error_lines(got)]
    want_norm = [line.replace("UNDETERMINED", "NAME").replace("localhost", "NAME") for line in _error_lines(want)]
    assert (got.returncode, norm) == (want.returncode, want_norm), show(got) + show(want)
    assert os.listdir(server.module) == []


# ---------------------------------------------------------------- nothing but rsync --server


def test_shell_and_other_commands_are_refused(ssh_server, tmp_path):
    server = ssh_server()
    shell = server.ssh("alice")
    assert shell.returncode == 1 and "no shell here" in shell.stderr, shell
    cat = server.ssh("alice", "cat", "/etc/passwd")
    assert cat.returncode == 1 and "command refused" in cat.stderr and "root:" not in cat.stdout, cat
    sneaky = server.ssh("alice", "rsync --server --daemon --config=/etc/passwd .")
    assert sneaky.returncode == 1 and "command refused" in sneaky.stderr, sneaky
    options = server.rsh("alice").split()[3:]  # without "ssh -p PORT"
    sftp = subprocess.run(["sftp", "-b", "-", "-P", str(server.ssh_port), *options, "alice@127.0.0.1"],
                          input="get /etc/passwd\n", capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert sftp.returncode != 0 and not (tmp_path / "passwd").exists(), sftp
    assert "subsystem 'sftp' refused" in server.log.log()


def test_port_forwarding_is_refused(ssh_server):
    server = ssh_server()
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(1)
    local = free_port()
    proc = subprocess.Popen([*server.rsh("alice").split(), "-N", "-L", f"{local}:127.0.0.1:{target.getsockname()[1]}",
                             "alice@127.0.0.1"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                conn = socket.create_connection(("127.0.0.1", local), timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("ssh -L never listened")
        conn.settimeout(10)
        assert conn.recv(1) == b""  # the channel is refused: the forwarded connection just closes
        conn.close()
        target.settimeout(0.5)
        with pytest.raises(TimeoutError):
            target.accept()  # nothing reached the forwarding target
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        target.close()
    assert "port forwarding to 127.0.0.1" in server.log.log() and "refused" in server.log.log()
    remote = server.ssh("alice", extra=("-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{free_port()}:127.0.0.1:1"))
    assert remote.returncode == 255 and "forwarding failed" in remote.stderr, remote


@pytest.mark.parametrize("path", ["../", "mod/../../etc/", "/etc/", "nomod/"])
def test_paths_outside_modules_are_refused(ssh_server, rsync_clients, tmp_path, path):
    client = rsync_clients["3.5.0"]
    server = ssh_server()
    src = tmp_path / "src"
    make_tree(src, {"escape.txt": "x\n"})
    before = sorted(os.listdir(server.work))
    got = client.run("-a", "-e", server.rsh("alice"), f"{src}/", f"alice@127.0.0.1:{path}", timeout=30)
    assert got.returncode == 5, show(got)
    assert any(line.startswith("@ERROR: ") for line in got.stderr.splitlines()), show(got)
    assert os.listdir(server.module) == [] and sorted(os.listdir(server.work)) == before
    pulled = client.run("-a", "-e", server.rsh("alice"), f"alice@127.0.0.1:{path}", f"{tmp_path}/dst/", timeout=30)
    assert pulled.returncode == 5 and not (tmp_path / "dst").exists(), show(pulled)


def test_host_key_is_made_once_with_mode_600(ssh_server):
    server = ssh_server()
    key = server.work / "host_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "fingerprint SHA256:" in server.log.log()


# ---------------------------------------------------------------- a killed client, passwords


def test_client_killed_mid_push_leaves_old_or_new_version(ssh_server, rsync_clients, tmp_path):
    client = rsync_clients["3.5.0"]
    server = ssh_server()
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(32 << 20))
    assert_ok(server.rsync(client, "shell", "alice", "-a", f"{src}/", server.url("shell", "alice")))
    old = (server.module / "big.bin").read_bytes()
    big.write_bytes(os.urandom(32 << 20))
    st = big.stat()  # same size: another second, or rsync's quick check rightly skips it
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    new = big.read_bytes()
    argv = [*client.argv_prefix, "-a", "--bwlimit=8m", "-e", server.rsh("alice"), f"{src}/",
            server.url("shell", "alice")]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60  # a loaded CI machine: the sums of 32 MiB come first
        while not any(n.startswith(".big.bin.") for n in os.listdir(server.module)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("no temp file appeared")
            time.sleep(0.025)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for _ in range(200):  # the worker sees the channel close and ends
        if server.log.log().count("session ended with code") >= 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the session did not end after the client was killed:\n" + server.log.log())
    now = (server.module / "big.bin").read_bytes()
    assert now in (old, new), "torn file"
    if now == new:
        assert [p.read_bytes() for p in (server.module / HISTORY).rglob("big.bin*")] == [old]
    assert not [n for n in os.listdir(server.module) if n.startswith(".big.bin.")]
    assert_ok(server.rsync(client, "shell", "alice", "-a", f"{src}/", server.url("shell", "alice")))
    assert (server.module / "big.bin").read_bytes() == new


def _password_login(port: int, user: str, password: str) -> str:
    """Log in with a password (asyncssh client: OpenSSH needs a tty for it); what a shell request gets."""
    import asyncio

    import asyncssh

    async def attempt() -> str:
        try:
            async with asyncssh.connect("127.0.0.1", port, username=user, password=password, known_hosts=None,
                                        client_keys=None, agent_path=None, preferred_auth="password") as conn:
                done = await conn.run("cat /etc/passwd", check=False)
                return f"exit {done.exit_status}: {done.stderr.strip()}"
        except asyncssh.PermissionDenied:
            return "permission denied"

    return asyncio.run(asyncio.wait_for(attempt(), 30))


def test_password_auth_is_off_by_default_and_uses_the_secrets_file(ssh_server):
    off = ssh_server()
    assert _password_login(off.ssh_port, "alice", SECRETS["alice"]) == "permission denied"
    on = ssh_server(global_params={"ssh password auth": True})
    assert _password_login(on.ssh_port, "alice", "wrong") == "permission denied"
    assert _password_login(on.ssh_port, "carol", SECRETS["carol"]) == "permission denied"  # not in auth users
    got = _password_login(on.ssh_port, "alice", SECRETS["alice"])
    assert got.startswith("exit 1: backupd: command refused"), got  # logged in; still only rsync runs


def test_pusher_full_sync_over_ssh(ssh_server, tmp_path):
    """``backupd push`` with a ``transport: ssh`` target: the stock client over -e ssh, history kept."""
    import sys

    import yaml

    server = ssh_server()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.ssh_port} " + (server.work / "host_key.pub").read_text())
    src = make_tree(tmp_path / "src", {"a.txt": "one\n", "d": {"b.txt": "two\n"}})
    target = {"url": f"rsync://alice@127.0.0.1:{server.ssh_port}/{MODULE}/sub", "transport": "ssh",
              "identity_file": str(server.keys["alice"]), "known_hosts": str(known)}
    config = tmp_path / "pusher.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                      "sources": [{"path": str(src), "targets": [target]}]}))
    since = time.time()
    for content in ("one\n", "changed\n"):
        (src / "a.txt").write_text(content)
        done = subprocess.run([sys.executable, "-m", "backupd", "push", "--config", str(config)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_trees_equal(src, server.module / "sub", check_dir_mtimes=False)
    assert (server.module / HISTORY / _today(since) / "sub" / "a.txt").read_text() == "one\n"


def test_embedded_default_prints_a_working_ssh_command(backupd_server, tmp_path):
    ssh_port = free_port()
    server = backupd_server(None, args=("--ssh-port", str(ssh_port)))
    _wait_port(ssh_port)
    data = server.cwd / "backupd-data"
    lines = [line for line in server.log().splitlines() if line.startswith("rsync -a -e 'ssh")]
    assert len(lines) == 1, server.log()
    assert f"ssh -p {ssh_port} -i {data}/ssh_client_ed25519 -o UserKnownHostsFile={data}/known_hosts" in lines[0]
    assert lines[0].endswith(" ./yourdir/ backup@127.0.0.1:backup/")
    assert stat.S_IMODE((data / "ssh_client_ed25519").stat().st_mode) == 0o600
    make_tree(tmp_path / "yourdir", {"f.txt": "pushed over ssh\n"})
    command = lines[0].replace("ssh -p", "ssh -o BatchMode=yes -p", 1)  # the known_hosts line makes it strict-safe
    done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (data / "backup" / "f.txt").read_text() == "pushed over ssh\n"


def test_secluded_args_push_and_pull(ssh_server, rsync_client, tmp_path):
    """``-s``: the command line holds options only; paths (spaces, non-UTF-8) come on the channel."""
    server = ssh_server()
    odd = os.fsdecode(b"caf\xe9 \xff.txt")
    src = make_tree(tmp_path / "src", {"a b": {"c d.txt": "spaced\n"}, odd: "latin-1 name\n"})
    for path in sorted(src.rglob("*"), reverse=True) + [src]:
        set_mtime(path, T0)
    push = server.url("shell", "alice", "in dir/")
    assert_ok(server.rsync(rsync_client, "shell", "alice", "-s", "-a", f"{src}/", push))
    assert_trees_equal(src, server.module / "in dir", mtime_precision_ns=rsync_client.mtime_precision_ns)
    dst = tmp_path / "dst"
    assert_ok(server.rsync(rsync_client, "shell", "bob", "-s", "-a", server.url("shell", "bob", "in dir/"), f"{dst}/"))
    assert_trees_equal(src, dst, mtime_precision_ns=rsync_client.mtime_precision_ns)
    escape = server.rsync(rsync_client, "shell", "alice", "-s", "-a", f"{src}/", server.url("shell", "alice", "../x/"))
    assert escape.returncode == 5 and "tries to leave its module" in escape.stderr, show(escape)


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def _signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


def test_a_client_faster_than_the_worker_cannot_fill_the_ssh_process(ssh_server, rsync_clients, tmp_path):
    """Back pressure client -> worker: the SSH process holds a few windows, not the push.

    asyncssh re-opens the SSH window on every delivery; with a small buffer
    towards the worker each pause let the client send one more window, and a
    1 GiB push grew the SSH process by 470 MB. ``--bwlimit`` is not used: the
    worker is made slow by ``SIGSTOP``, so the client is always faster.
    """
    server = ssh_server()
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:
        for _ in range(192):
            f.write(os.urandom(1 << 20))
    ssh_procs = _children(server.log.proc.pid)
    assert ssh_procs, "no SSH process under the listener"
    before = max(_rss_mib(p) for p in ssh_procs)
    client = rsync_clients["3.5.0"]
    argv = [*client.argv_prefix, "-a", "-e", server.rsh("alice"), f"{src}/", server.url("shell", "alice")]
    push = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, workers, deadline = before, set(), time.monotonic() + 120
    while push.poll() is None and time.monotonic() < deadline:
        for ssh_proc in ssh_procs:
            workers |= set(_children(ssh_proc))
            peak = max(peak, _rss_mib(ssh_proc))
        _signal_all(workers, signal.SIGSTOP)  # the worker runs 1/5 of the time: the client stays ahead
        time.sleep(0.2)
        _signal_all(workers, signal.SIGCONT)
        time.sleep(0.05)
    _signal_all(workers, signal.SIGCONT)
    out, err = push.communicate(timeout=120)
    assert push.returncode == 0, err
    assert (server.module / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    print(f"SSH process grew {peak - before:.0f} MiB")
    assert peak - before < 48, f"SSH process grew {peak - before:.0f} MiB during a 192 MiB push"
