"""The SSH transport: an asyncssh server that runs only the stock client's ``rsync --server``.

Two exec commands are accepted, nothing else:

- remote-shell mode, ``rsync --server [--sender] OPTIONS . MODULE/PATH...``
  (``rsync -e ssh SRC user@host:MODULE/PATH``): a :class:`ShellSession`;
- daemon over SSH, ``rsync --server --daemon .`` (``rsync -e ssh SRC
  user@host::MODULE``): the daemon protocol on the channel, the same
  :class:`Session` as on TCP (module listing, the module's own ``auth users``
  and secrets challenge).

Each channel's stdin/stdout becomes one end of a socketpair handed to a
worker process (worker.fork_session), exactly like an accepted TCP
connection; this process only pumps bytes and reports the worker's exit code
as the channel's exit status. Shells, other commands, subsystems (sftp),
pty, port/agent/X11 forwarding are refused (one line on stderr, exit status
1, or the SSH refusal for forwarding); env requests are accepted by asyncssh
and never reach a session. A client address that no module's ``hosts
allow``/``hosts deny`` admits is disconnected before it can authenticate
(a host that some module admits gets the daemon's refusal for the others).

The server runs in its own process with its own event loop
(``start_ssh_process``), forked by ``backupd serve`` next to the TCP listener.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import signal
import socket
from collections.abc import Callable

import asyncssh
from loguru import logger

from backupd.config.access import PeerName, allow_access
from backupd.config.model import DaemonConfig
from backupd.protocol.server_args import has_protected_args
from backupd.roles.session import run_session
from backupd.roles.shell_session import run_shell_session
from backupd.transport.ssh_auth import FailureLog, load_authorized_keys, password_matches
from backupd.transport.worker import fork_session, trim_heap

LOGIN_GRACE_S = 30.0  # OpenSSH's LoginGraceTime, shorter
MAX_AUTH_TRIES = 6  # OpenSSH's MaxAuthTries
DRAIN_LIMIT_S = 60.0  # how long a finished session's output may take to leave
STOP_WAIT_S = 10.0
PUMP_SLACK = 256 * 1024  # worker-stream buffer above two SSH windows before reading from the channel pauses
REFUSED_SHELL = "backupd: no shell here; this server only runs rsync (rsync -e ssh SRC user@host:MODULE/PATH)"


class Refused(Exception):
    """A channel request that is answered with a one-line message and exit status 1."""


def parse_command(command: str) -> tuple[str, list[bytes]]:
    """Which session an exec command asks for: ``("shell", argv)`` or ``("daemon", [])``.

    ``argv`` is the command's words after ``rsync``, as bytes (``--server``
    first). The client quotes arguments for a POSIX shell (rsync 3.2.4+
    backslash-escapes them), so the words are split as a shell would.

    With ``-s`` (``--secluded-args``) the command holds options only; the
    real arguments come first on the channel.

    Raises:
        Refused: anything that is not ``rsync --server ... . PATH...``,
            ``rsync --server -s...`` or exactly ``rsync --server --daemon .``.
    """
    shown = command if len(command) <= 80 else command[:77] + "..."
    try:
        words = shlex.split(command)
    except ValueError:
        words = []
    if len(words) < 3 or os.path.basename(words[0]) != "rsync" or words[1] != "--server":
        raise Refused(f"backupd: command refused: {shown!r}; this server only runs rsync --server")
    argv = [os.fsencode(w) for w in words[1:]]
    options = words[2 : words.index(".")] if "." in words[2:] else None
    if options is None:
        if all(w.startswith("-") for w in words[2:]) and has_protected_args([b"rsync", *argv]):
            return "shell", argv  # -s: the arguments follow on the channel (shell_session reads them)
        raise Refused(f"backupd: command refused: {shown!r} names no '.' before its paths")
    if "--daemon" in options:
        if words[1:] != ["--server", "--daemon", "."]:
            raise Refused(f"backupd: command refused: {shown!r}; daemon mode is 'rsync --server --daemon .'")
        return "daemon", []
    return "shell", argv


class SshDaemon:
    """The SSH listener's state: configuration, login failures, descriptors workers must not keep.

    Args:
        config: the configuration in force (``reload`` replaces it on SIGHUP).
        sockets: bound, listening sockets for the SSH port.
        host_key: the server's private host key.
        slot_fd: the daemon's ``max connections`` lock file, shared with TCP sessions.
        reload: re-reads the configuration file (None: embedded default).
    """

    def __init__(self, config: DaemonConfig, sockets: list[socket.socket], host_key: asyncssh.SSHKey,
                 *, slot_fd: int | None = None, reload: Callable[[], DaemonConfig] | None = None) -> None:
        self.config = config
        self.sockets = sockets
        self.host_key = host_key
        self.slot_fd = slot_fd
        self.reload_config = reload
        self.failures = FailureLog()
        self.inherited: set[int] = {s.fileno() for s in sockets}  # closed in every worker
        self.sessions: set[RsyncChannel] = set()
        self._stop = asyncio.Event()

    def host_allowed(self, addr: str) -> bool:
        """True if at least one module's ``hosts allow``/``hosts deny`` admits ``addr``."""
        reverse = self.config.reverse_lookup
        name = PeerName(functools.partial(_reverse_name, addr), reverse)
        modules = self.config.modules.values()
        return any(allow_access(addr, m.hosts_allow, m.hosts_deny, name, m.forward_lookup) for m in modules)

    def reload(self) -> None:
        """SIGHUP: new logins use the re-read configuration; a broken file keeps the old one."""
        if self.reload_config is None:
            return
        try:
            self.config = self.reload_config()
        except Exception as exc:  # a broken file must never stop the listener
            logger.error("SIGHUP: SSH listener keeps the previous configuration: {}", exc)
            return
        logger.info("SIGHUP: SSH listener reloaded the configuration ({} modules)", len(self.config.modules))

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then wait up to STOP_WAIT_S for running sessions."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        acceptors = [await asyncssh.listen(sock=sock, **self._options()) for sock in self.sockets]
        trim_heap()  # sessions fork from this process too
        await self._stop.wait()
        for acceptor in acceptors:
            acceptor.close()
        deadline = loop.time() + STOP_WAIT_S
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.1)

    def _options(self) -> dict:
        return dict(
            server_factory=lambda: SshLogin(self),
            server_host_keys=[self.host_key],
            login_timeout=LOGIN_GRACE_S,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            encoding=None,
            server_version="backupd",
        )


class SshLogin(asyncssh.SSHServer):
    """One SSH connection: host rules, authentication, what its channels may do."""

    def __init__(self, daemon: SshDaemon) -> None:
        self.daemon = daemon
        self.conn: asyncssh.SSHServerConnection | None = None
        self.addr = "?"
        self.user: str | None = None
        self.keys: asyncssh.SSHAuthorizedKeys | None = None
        self.failed = 0
        self._fd: int | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Note the peer and the connection's descriptor (closed in every worker)."""
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.addr = peer[0] if peer else "?"
        sock = conn.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()
            self.daemon.inherited.add(self._fd)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection's descriptor."""
        if self._fd is not None:
            self.daemon.inherited.discard(self._fd)
            self._fd = None

    def begin_auth(self, username: str) -> bool:
        """Host rules first, then the user's authorized_keys; authentication is always required.

        A client address that no module admits is disconnected here, after the
        key exchange (so the client can print the reason) and before any
        authentication attempt.
        """
        if not self.daemon.host_allowed(self.addr):
            logger.warning("SSH connection from {} refused: no module allows this host", self.addr)
            self.conn.disconnect(asyncssh.DISC_HOST_NOT_ALLOWED_TO_CONNECT, f"access denied from {self.addr}")
            return True
        self.keys = load_authorized_keys(self.daemon.config.ssh_authorized_keys, username)
        return True

    def public_key_auth_supported(self) -> bool:
        """Keys from authorized_keys files."""
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """True if the user's authorized_keys lists ``key`` (``from=`` honoured)."""
        if self.keys is not None and self.keys.validate(key, self.addr, self.addr) is not None:
            return True
        await self._failed(username, "public key")
        return False

    def password_auth_supported(self) -> bool:
        """Only with ``ssh password auth = yes``."""
        return self.daemon.config.ssh_password_auth

    async def validate_password(self, username: str, password: str) -> bool:
        """True if a module admitting the user has this password in its secrets file."""
        if password_matches(self.daemon.config, username, password):
            return True
        await self._failed(username, "password")
        return False

    async def _failed(self, username: str, method: str) -> None:
        delay = self.daemon.failures.delay_s(self.addr)
        self.daemon.failures.record(self.addr)
        self.failed += 1
        logger.warning("SSH {} login failed for {!r} from {} (try {})", method, username, self.addr, self.failed)
        await asyncio.sleep(delay)
        if self.failed >= MAX_AUTH_TRIES and self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication failures")

    def auth_completed(self) -> None:
        """Log the login."""
        self.user = self.conn.get_extra_info("username") if self.conn is not None else None
        logger.info("SSH login {!r} from {}", self.user, self.addr)

    def session_requested(self) -> asyncssh.SSHServerSession:
        """A session channel: it may run rsync --server only."""
        return RsyncChannel(self)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        """ssh -L: refused."""
        logger.warning("SSH port forwarding to {}:{} refused for {}", dest_host, dest_port, self.addr)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "backupd: port forwarding refused")

    def server_requested(self, listen_host, listen_port) -> bool:
        """ssh -R: refused."""
        logger.warning("SSH remote forwarding of port {} refused for {}", listen_port, self.addr)
        return False

    def unix_connection_requested(self, dest_path):
        """Forwarding to a Unix socket: refused."""
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "backupd: forwarding refused")

    def unix_server_requested(self, listen_path) -> bool:
        """Remote Unix socket forwarding: refused."""
        return False


class _Pump(asyncio.Protocol):
    """The listener's end of a worker's socketpair: worker output -> SSH channel."""

    def data_received(self, data: bytes) -> None:
        self.channel.chan.write(data)

    def __init__(self, channel: RsyncChannel) -> None:
        self.channel = channel
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def eof_received(self) -> bool:
        """The worker has said everything (its shutdown(SHUT_WR) after the final goodbye).

        EOF to the client, as the worker's shutdown does on TCP, and EOF back to
        the worker: it waits for the client's end (draining, as on TCP), but a
        protocol-30 client reads its one NDX_DONE and then waits for ssh to
        exit, so that end never comes while the channel is open. Whatever the
        client still sends is dropped, as sshd drops it after rsync exits.
        """
        self.channel.chan.write_eof()
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        self.channel.stream_ended()
        return True

    def pause_writing(self) -> None:
        self.channel.chan.pause_reading()

    def resume_writing(self) -> None:
        self.channel.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.stream_ended()


class RsyncChannel(asyncssh.SSHServerSession):
    """One session channel: the accepted rsync command in a worker, or a refusal."""

    def __init__(self, login: SshLogin) -> None:
        self.login = login
        self.chan: asyncssh.SSHServerChannel | None = None
        self.request: tuple[str, list[bytes]] | None = None
        self.refusal: str | None = None
        self.pump: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.pid: int | None = None
        self.code: int | None = None
        self._ended = self._finishing = False

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # noqa: D102
        self.chan = chan

    def shell_requested(self) -> bool:  # noqa: D102
        self.refusal = REFUSED_SHELL
        return True

    def exec_requested(self, command: str) -> bool:  # noqa: D102
        try:
            self.request = parse_command(command)
        except Refused as exc:
            self.refusal = str(exc)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:  # noqa: D102
        self.refusal = f"backupd: subsystem {subsystem!r} refused; this server only runs rsync"
        return True

    def session_started(self) -> None:
        """Start the worker, or refuse: one line on stderr, exit status 1."""
        if self.request is None:
            logger.warning("SSH {!r} from {}: {}", self.login.user, self.login.addr, self.refusal or REFUSED_SHELL)
            self.chan.write_stderr(((self.refusal or REFUSED_SHELL) + "\n").encode())
            self.chan.exit(1)
            return
        self.chan.pause_reading()
        asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        daemon, login = self.login.daemon, self.login
        kind, argv = self.request
        runner = run_session if kind == "daemon" else functools.partial(run_shell_session, argv=argv, user=login.user)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = fork_session(
                theirs, login.addr, daemon.config, [], close_fds=[*daemon.inherited, ours.fileno()],
                auth_fail_delay_s=daemon.failures.delay_s(login.addr), slot_fd=daemon.slot_fd, runner=runner,
            )
        except OSError as exc:
            logger.error("cannot fork an SSH session for {}: {}", login.addr, exc)
            ours.close()
            self.chan.exit(12)
            return
        finally:
            theirs.close()
        daemon.sessions.add(self)
        daemon.inherited.add(ours.fileno())
        self._pidfd = os.pidfd_open(self.pid)
        daemon.inherited.add(self._pidfd)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._pidfd, self._reaped)
        ours_fd = ours.fileno()
        self.pump, _ = await loop.connect_accepted_socket(lambda: _Pump(self), ours)
        # Back pressure client -> worker. asyncssh re-opens the whole SSH window whenever it
        # delivers a packet, also while earlier packets still wait in its buffer; if each
        # resume let only one packet through (a small high-water mark), that buffer would grow
        # by a window per pause (545 MB for a 1 GiB push). With room for a whole window above
        # the low mark, a resume drains asyncssh's buffer completely: at most ~2 windows held.
        window = self.chan.get_recv_window()
        self.pump.set_write_buffer_limits(high=2 * window + PUMP_SLACK, low=window)
        self._pump_fd = ours_fd
        for data in self.early:
            self.pump.write(data)
        self.early.clear()
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype) -> None:  # noqa: D102
        if self.pump is None:
            self.early.append(data)
        elif not self._ended and not self.pump.is_closing():
            self.pump.write(data)

    def eof_received(self) -> bool:  # noqa: D102
        if self.pump is not None and not self._ended and not self.pump.is_closing():
            self.pump.write_eof()
        return True

    def pause_writing(self) -> None:  # noqa: D102
        if self.pump is not None:
            self.pump.pause_reading()

    def resume_writing(self) -> None:  # noqa: D102
        if self.pump is not None and not self.pump.is_closing():
            self.pump.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away: close the worker's stream (it ends as after a dropped TCP connection)."""
        if self.pump is not None and not self.pump.is_closing():
            self.pump.close()

    def stream_ended(self) -> None:
        """The worker closed its output."""
        self._ended = True
        self._maybe_finish()

    def _reaped(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        try:
            _, status = os.waitpid(self.pid, 0)
            self.code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            self.code = 255
        if self.code < 0:
            self.code = 128 - self.code  # killed by a signal, as a shell reports it
        self.login.daemon.inherited.discard(self._pidfd)
        os.close(self._pidfd)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._ended and self.code is not None and not self._finishing:
            self._finishing = True
            asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_LIMIT_S
        while self.chan.get_write_buffer_size() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.pump is not None:
            self.login.daemon.inherited.discard(self._pump_fd)
            self.pump.close()
        self.login.daemon.sessions.discard(self)
        self.chan.exit(self.code)


def _reverse_name(addr: str) -> str | None:
    try:
        return socket.gethostbyaddr(addr)[0]
    except OSError:
        return None


def start_ssh_process(daemon: SshDaemon, close: list[socket.socket]) -> int:
    """Fork the SSH listener process; returns its pid. ``close``: the TCP listeners, closed in it."""
    pid = os.fork()
    if pid:
        for sock in daemon.sockets:
            sock.close()
        return pid
    code = 1
    try:
        for sock in close:
            sock.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        asyncio.run(daemon.run())
        code = 0
    except BaseException:  # the child must never return into the TCP listener's loop
        logger.exception("SSH listener crashed")
    finally:
        logger.complete()
        os._exit(code)
