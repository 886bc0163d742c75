"""One daemon connection: greeting, module, auth, arguments, setup, role.

Errors reach the wire in one place, ``run_session``: before ``@RSYNCD: OK``
as an ``@ERROR`` line, after it as MSG_ERROR + MSG_ERROR_EXIT once the setup
phase is complete. Source: rsync clientserver.c start_daemon()/rsync_module(),
compat.c setup_protocol(); rsync-protocol-a.md §3, §5, §6.5.
"""

from __future__ import annotations

import enum
import fnmatch
import grp
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from loguru import logger

from backupd import __version__
from backupd.config.access import PeerName, allow_access
from backupd.config.model import AuthUser, DaemonConfig, ModuleConfig
from backupd.errors import (
    EXIT_TEXT,
    BackupdError,
    ConfigError,
    DaemonRefusal,
    ExitCode,
    ProtocolError,
    RsyncError,
    StreamClosed,
    Unsupported,
)
from backupd.ops import metrics as ops_metrics
from backupd.protocol import greeting as gr
from backupd.protocol.constants import LEGACY_PROTOCOL, MUNGE_PREFIX, MsgCode
from backupd.protocol.negotiate import (
    Negotiated,
    finish_setup,
    legacy_refusal,
    legacy_setup,
    plan_setup,
)
from backupd.protocol.server_args import (
    TransferOptions,
    has_protected_args,
    parse_server_args_lenient,
    popt_error,
    refused_option,
)
from backupd.protocol.sums import SUPPORTED_CHECKSUMS
from backupd.protocol.wire import decode_vstring, encode_int32, encode_varint, encode_vstring
from backupd.roles.channel import Inbox, Outbox
from backupd.roles.snapshot_view import open_view, split_view_name
from backupd.storage.snapshot import discard as discard_view
from backupd.transport.privileges import Identity, session_identity, switch_to
from backupd.transport.stream import Stream, abort

MAX_EARLY_INPUT = 5120
AUTH_FAIL_DELAY_S = 1.0
HANDSHAKE_TIMEOUT_S = 60.0  # a silent client cannot hold a worker before it has logged in
EXIT_DELAY_S = 0.1  # cleanup.c _exit_cleanup: msleep(100) before a failed server closes
OPTION_ERROR_DELAY_S = 0.4  # clientserver.c rsync_module: msleep(400) after an option error
AUTHENTICATED, AUTH_FAILED = "authenticated", "auth-failed"  # SessionContext.on_event


class Closing(enum.Enum):
    """How a session's connection ends (``Session._close``), after its exit delay."""

    POLITE = "polite"  # shut down, read the client's rest, close (rsyncd's noop_io_until_death)
    RESET = "reset"    # a reset once the output is acknowledged (rsyncd exiting with input unread)
    EXIT = "exit"      # a plain close: the kernel resets only if the client's data is unread


@dataclass
class SessionContext:
    """Who is connected and under which configuration."""

    config: DaemonConfig
    peer_addr: str
    session_id: str = "-"
    clock: Callable[[], float] = time.time
    stats: dict = field(default_factory=dict)
    # the listener's pre-auth accounting: called with AUTHENTICATED once the
    # client is past auth, AUTH_FAILED on a wrong login (tcp.DaemonServer)
    on_event: Callable[[str], None] | None = None
    auth_fail_delay_s: float = AUTH_FAIL_DELAY_S  # grows with an address's recent failures
    slot_fd: int | None = None  # the listener's `max connections` lock file (slots.anonymous_lock_file)

    def __post_init__(self) -> None:
        self.peer_name = PeerName(self.peer_host, self.config.reverse_lookup)

    def peer_host(self) -> str | None:
        """Reverse-resolved peer name (only when ``reverse lookup`` is on)."""
        if not self.config.reverse_lookup:
            return None
        try:
            return socket.gethostbyaddr(self.peer_addr)[0]
        except OSError:
            return None


@dataclass
class ModuleRequest:
    """The result of the daemon handshake: module, user, access, arguments."""

    module: ModuleConfig
    user: str | None
    read_only: bool
    protocol: int
    opts: TransferOptions
    args_error: RsyncError | None
    root_fd: int | None = None  # the module dir, opened before a uid/gid switch


class Session:
    """Runs one client session over ``stream``; see ``run``."""

    def __init__(self, stream: Stream, ctx: SessionContext) -> None:
        self.stream = stream
        self.ctx = ctx
        self.inbox = Inbox(stream, timeout_s=HANDSHAKE_TIMEOUT_S)
        self.outbox: Outbox | None = None
        self.log = logger.bind(session=ctx.session_id, peer=ctx.peer_addr)
        self.role = "Receiver"
        self.request: ModuleRequest | None = None  # set by run(); the transfer log reads its user
        # rsyncd's input buffering (io.c iobuf.in): on once a role reads the client's
        # multiplexed data; a fatal error after that drains the input before exiting
        # (noop_io_until_death), before it the process exits unread and the kernel resets
        self.input_buffered = False
        self.closing = Closing.POLITE
        # how long a failed session waits, its messages sent, before it closes: rsyncd sleeps
        # 100 ms in cleanup.c _exit_cleanup (am_server && exit_code), 400 ms more after an
        # option error (clientserver.c rsync_module), time in which the client's writes land
        # and it is reading when the reset comes ("read error", not "write error")
        self.exit_delay_s = 0.0
        self.view_name: str | None = None  # MODULE@T served (snapshot_view.py), and its scratch dir
        self.view_dir = None

    # -- the pre-binary handshake ---------------------------------------------------------
    def handshake(self) -> ModuleRequest | None:
        """Greeting, module line, access, auth, OK, arguments. None after a listing.

        Raises:
            DaemonRefusal: anything refused before ``@RSYNCD: OK``.
        """
        with handshake_deadline(self.ctx.config.handshake_timeout_s):
            return self._handshake()

    def _report(self, event: str) -> None:
        if self.ctx.on_event is not None:
            try:
                self.ctx.on_event(event)
            except OSError:
                pass

    def _handshake(self) -> ModuleRequest | None:
        self.stream.sendall(gr.encode_greeting())
        peer = gr.decode_greeting(self.inbox.read_line(256))
        protocol = gr.negotiate_protocol(peer)
        self._send_motd()
        line = self._read_module_line()
        if line in (b"", b"#list"):
            self._send_listing()
            return None
        if line.startswith(b"#"):
            raise DaemonRefusal(f"Unknown command '{line.decode('utf-8', 'replace')}'")
        name = line.decode("utf-8", "replace")
        module, view_at = self.ctx.config.modules.get(name), None
        if module is None and (view := split_view_name(name, self.ctx.config.modules)) is not None:
            module, view_at = view   # MODULE@T: snapshot_view.py
        if module is None:
            raise DaemonRefusal(f"Unknown module '{name}'")
        ops_metrics.session_module(self, module)  # ops hook: metrics labels, transfer log
        self._check_host(module)
        self._claim_slot(module)
        user, read_only = self._authenticate(module, peer)
        self._report(AUTHENTICATED)
        if view_at is not None:
            module, self.view_dir = open_view(module, view_at, self.ctx.session_id, self.log)
            read_only, self.view_name = True, name
        root_fd = self._enter_module(module)
        self.stream.sendall(b"@RSYNCD: OK\n")
        argv = self._read_args() if protocol >= LEGACY_PROTOCOL else self._read_arg_lines()
        opts, error = parse_server_args_lenient(argv)
        self.log = self.log.bind(module=module.name, user=user or "-")
        return ModuleRequest(module, user, read_only, protocol, opts, error, root_fd)

    def _enter_module(self, module: ModuleConfig) -> int | None:
        """Safety checks and the switch to the module's uid/gid (rsync clientserver.c rsync_module).

        Returns the module directory's fd when the session switches ids (the
        module names a uid or gid, or a root server defaults to nobody/nogroup
        as rsyncd does; opened before the switch, as rsyncd chdirs first),
        else None.

        Raises:
            DaemonRefusal: a ``/rsyncd-munged`` directory exists while the
                module munges symlinks; an unknown uid/gid; a failed switch.
        """
        if module.munge_symlinks and os.path.isdir(MUNGE_PREFIX.rstrip(b"/")):
            self.log.error("Symlink munging is unsafe when a {} directory exists.", os.fsdecode(MUNGE_PREFIX))
            raise DaemonRefusal("daemon security issue -- contact admin")
        identity = session_identity(module.uid, module.gid, as_root=os.geteuid() == 0)
        if identity == Identity(None, None):
            os.close(self._open_module_dir(module))  # a missing path is refused here, as rsyncd does
            return None
        root_fd = self._open_module_dir(module)
        try:
            if switch_to(identity):
                self.log.info("switched to uid {} gid {} for module {}", os.getuid(), os.getgid(), module.name)
        except DaemonRefusal:
            os.close(root_fd)
            raise
        return root_fd

    def _open_module_dir(self, module: ModuleConfig) -> int:
        """The module directory's fd (rsync clientserver.c rsync_module: chroot/chdir).

        Raises:
            DaemonRefusal: the path cannot be opened as a directory; the
                message is rsyncd's, ``chroot failed`` or (``use chroot =
                no``) ``chdir failed``, and the reason goes to the log.
        """
        try:
            return os.open(module.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self.log.error("module {} path {}: {}", module.name, module.path, exc.strerror)
            raise DaemonRefusal("chroot failed" if module.use_chroot else "chdir failed") from None

    def _send_motd(self) -> None:
        path = self.ctx.config.motd_file
        if path is None:
            return
        try:
            text = path.read_bytes()[:65536]
        except OSError as exc:
            self.log.warning("motd file {}: {}", path, exc.strerror)
            return
        self.stream.sendall(text.rstrip(b"\n") + b"\n\n")

    def _read_module_line(self) -> bytes:
        line = self.inbox.read_line(1024).rstrip(b"\r")
        if line.startswith(b"#early_input="):
            try:
                size = int(line.split(b"=", 1)[1])
            except ValueError:
                raise DaemonRefusal("invalid early_input length") from None
            if not 0 <= size <= MAX_EARLY_INPUT:
                raise DaemonRefusal(f"early_input of {size} bytes exceeds {MAX_EARLY_INPUT}")
            self.inbox.read_raw(size)
            line = self.inbox.read_line(1024).rstrip(b"\r")
        return line

    def _send_listing(self) -> None:
        # every module with `list = yes`, whatever its hosts rules (rsync 3.5.0 clientserver.c send_listing)
        shown = [(m.name, m.comment) for m in self.ctx.config.modules.values() if m.list]
        self.stream.sendall(gr.encode_listing(shown))
        self.log.info("module list sent ({} modules)", len(shown))

    def _claim_slot(self, module: ModuleConfig) -> None:
        from backupd.transport.slots import claim_slot, default_lock_path

        if module.max_connections < 0:
            raise DaemonRefusal(f"module {module.name} is disabled")
        index = list(self.ctx.config.modules).index(module.name)
        try:
            lock = self.ctx.slot_fd if self.ctx.slot_fd is not None else default_lock_path(self.ctx.config.source)
            self._slot_fd = claim_slot(module, index, lock)
        except OSError as exc:
            self.log.error("lock file for max connections: {}", exc)
            raise DaemonRefusal("failed to open lock file") from None
        if self._slot_fd is None:
            raise DaemonRefusal(f"max connections ({module.max_connections}) reached -- try again later")

    def _check_host(self, module: ModuleConfig) -> None:
        name = self.ctx.peer_name
        if not allow_access(self.ctx.peer_addr, module.hosts_allow, module.hosts_deny, name, module.forward_lookup):
            raise DaemonRefusal(f"access denied to {module.name} from {name.get()} ({self.ctx.peer_addr})")

    def _authenticate(self, module: ModuleConfig, peer: gr.Greeting) -> tuple[str | None, bool]:
        if not module.auth_users:
            return None, module.read_only
        digest = gr.choose_auth_digest(peer)
        challenge = gr.make_challenge(digest, os.urandom(32))
        self.stream.sendall(f"@RSYNCD: AUTHREQD {challenge}\n".encode())
        user, response = gr.parse_auth_line(self.inbox.read_line(1024))
        access = self._check_user(module, user, digest, challenge, response)
        if access is None:
            self.log.warning("auth failed on module {} for user {!r}", module.name, user)
            ops_metrics.auth_failed(module.name)  # ops hook
            self._report(AUTH_FAILED)
            time.sleep(self.ctx.auth_fail_delay_s)
            raise DaemonRefusal(f"auth failed on module {module.name}")
        return user, {"ro": True, "rw": False}.get(access, module.read_only)

    def _check_user(self, module: ModuleConfig, user: str, digest: str, challenge: str, response: str) -> str | None:
        """The access word for a verified user ('ro', 'rw', '' = module default), or None."""
        from backupd.config.secrets import read_secrets

        if module.secrets_file is None:
            return None
        try:
            secrets = read_secrets(module.secrets_file, module.strict_modes)
        except (ConfigError, OSError) as exc:
            self.log.error("secrets file of module {}: {}", module.name, exc)
            return None
        rule = match_auth_rule(module, user)
        if rule is None:
            return None
        entry, matched_group = rule
        # check_secret: the user's own line, or with a group rule that group's "@group:" line;
        # a name starting with '@' is never a user line (a user "@daemon" cannot use "@daemon:")
        passwords = [] if user.startswith("@") else [secrets.get(user)]
        if matched_group is not None:
            passwords.append(secrets.get("@" + matched_group))
        for password in passwords:
            if password is not None and gr.check_response(digest, password.encode(), challenge, response):
                return entry.access or ""
        return None

    def _read_arg_list(self, read_one) -> list[bytes]:
        """Arguments from ``read_one()`` up to an empty one, at most 1024 (ProtocolError beyond)."""
        argv = []
        for _ in range(1025):
            arg = read_one()
            if not arg:
                return argv
            argv.append(arg)
        raise ProtocolError("argument list over 1024 arguments")

    def _read_nul_list(self) -> list[bytes]:
        """A NUL-separated list (the arguments from protocol 30 on; the ``-s`` second list at every protocol)."""
        return self._read_arg_list(lambda: self.inbox.read_until_nul(4096))

    def _read_args(self) -> list[bytes]:
        argv = self._read_nul_list()
        if has_protected_args(argv):
            argv += self._read_nul_list()[1:]
        return argv

    def _read_arg_lines(self) -> list[bytes]:
        r"""The arguments of a protocol 27-29 client: ``\n``-terminated lines up to an empty one.

        Source: rsync clientserver.c rsync_module -> io.c read_args (rl_nulls off below 30).
        """
        argv = self._read_arg_list(lambda: self.inbox.read_line(4096).rstrip(b"\r"))
        if has_protected_args(argv):
            second = self._read_nul_list()
            # below 30 the client also puts "(null)", "." and its paths in the first list; as
            # rsyncd, only that list's options count, the second list gives the rest
            options = next((i for i, a in enumerate(argv) if not a.startswith(b"-")), len(argv))
            argv = argv[:options] + second[1:]
        return argv

    # -- the binary setup ----------------------------------------------------------------
    def setup(self, request: ModuleRequest) -> Negotiated:
        """Compat flags, name lists, seed; then both directions multiplexed.

        Below protocol 30 only the seed is sent, and only our output is
        multiplexed: the client's stream stays raw (main.c
        do_server_recv/start_server, compat.c setup_protocol).

        Raises:
            Unsupported: a client without varint flists, or no common name.
        """
        opts = request.opts
        if request.protocol < LEGACY_PROTOCOL:
            seed = opts.checksum_seed if opts.checksum_seed is not None else self._make_seed()
            self.stream.sendall(encode_int32(_signed(seed)))
            self._start_output(request)
            refused = legacy_refusal(opts, request.protocol)
            if refused is not None:
                raise RsyncError(refused, ExitCode.PROTOCOL, bare=True)
            return legacy_setup(opts, _signed(seed))
        plan = plan_setup(opts, allow_inc_recurse=True)
        out = encode_varint(int(plan.compat_flags))
        if plan.send_checksum_list:
            out += encode_vstring(" ".join(SUPPORTED_CHECKSUMS).encode())
        if plan.send_compress_list:
            from backupd.protocol.negotiate import OUR_COMPRESSIONS

            out += encode_vstring(" ".join(OUR_COMPRESSIONS).encode())
        self.stream.sendall(out)
        client_sums = decode_vstring(self.inbox.read_raw, 255) if plan.send_checksum_list else None
        client_zips = decode_vstring(self.inbox.read_raw, 255) if plan.send_compress_list else None
        seed = opts.checksum_seed if opts.checksum_seed is not None else self._make_seed()
        self.stream.sendall(encode_int32(_signed(seed)))
        self.inbox.start_mux()
        self._start_output(request)
        return finish_setup(
            plan,
            opts,
            client_checksums=client_sums,
            client_compressions=client_zips,
            our_checksums=SUPPORTED_CHECKSUMS,
            seed=_signed(seed),
        )

    def _start_output(self, request: ModuleRequest) -> None:
        """Multiplex our output from here on; the session's I/O timeout and keep-alives."""
        opts = request.opts
        self.outbox = Outbox(self.stream)
        timeout = _effective_timeout(request.module.timeout_s, opts.timeout_s)
        self.inbox.timeout_s = timeout or None
        self.stream.settimeout(timeout or None)
        if timeout:
            if request.protocol >= LEGACY_PROTOCOL:  # main.c: 31+ (30 kept as it was); old clients die on it
                self.outbox.send_msg(MsgCode.IO_TIMEOUT, encode_int32(timeout))
            self.outbox.keepalive_s = max(1, (timeout + 1) // 2)
            self.inbox.timeout_s = timeout
            self.stream.settimeout(timeout)

    def _make_seed(self) -> int:
        return (int(self.ctx.clock()) ^ (os.getpid() << 6)) & 0x7FFFFFFF

    def _setup_for_error(self, request: ModuleRequest) -> None:
        """Complete the setup phase leniently so that an error can be framed."""
        try:
            self.setup(request)
        except RsyncError:
            if self.outbox is None:
                self.outbox = Outbox(self.stream)
                if request.protocol >= LEGACY_PROTOCOL:
                    self.inbox.start_mux()

    def _option_error(self, request: ModuleRequest, exc: RsyncError) -> RsyncError:
        """``exc``, an option rsyncd's parser refuses: framed after a lenient setup, closed 400 ms later.

        clientserver.c rsync_module: option_error(), msleep(400), exit_cleanup().
        """
        self._setup_for_error(request)
        self.exit_delay_s = OPTION_ERROR_DELAY_S
        return exc

    # -- running ---------------------------------------------------------------------------
    def run(self) -> ExitCode:
        """Run the session to its end. Never raises; returns the exit code."""
        request = None
        try:
            request = self.handshake()
            if request is None:
                return ExitCode.OK
            self.request = request
            if request.opts.sender:
                self.role = "sender"
            if request.args_error is not None:
                raise self._option_error(request, request.args_error)
            refused = refused_option(request.opts, request.module.refuse_options)
            if refused is not None:  # as rsyncd: no [role]
                raise self._option_error(request, Unsupported(f"rsync: The server is configured to refuse {refused}"))
            dashed = _dash_path_arg(request.opts.paths, request.module.name)
            if dashed is not None:
                raise self._option_error(request, popt_error(dashed, "unknown option"))
            negotiated = self.setup(request)
            return self._run_role(request, negotiated)
        except DaemonRefusal as exc:
            if self.outbox is None:
                self.log.warning("refused: {}", exc)
                self._send_line_error(str(exc))
                return exc.exit_code
            return self._fatal(exc)
        except StreamClosed as exc:
            self.log.warning("session ended: {}", exc)
            return exc.exit_code
        except RsyncError as exc:
            if self.outbox is None and request is not None:
                self._setup_for_error(request)
            return self._fatal(exc)
        except Exception:
            self.log.exception("internal error")
            return self._fatal(RsyncError("internal error, see the server log", ExitCode.CRASHED))
        finally:
            self._close()

    def _run_role(self, request: ModuleRequest, negotiated: Negotiated) -> ExitCode:
        from backupd.roles.push import run_push

        if request.opts.sender:
            self.role = "sender"
            self.input_buffered = True  # main.c start_server: before do_server_sender's checks
            if request.module.write_only:
                raise RsyncError("ERROR: module is write only", ExitCode.SYNTAX)
            from backupd.roles.sender import run_pull

            return run_pull(self, request, negotiated)
        if request.read_only:
            if self.view_name is not None:
                raise RsyncError(f"ERROR: module {self.view_name} is a read-only snapshot view", ExitCode.SYNTAX)
            raise RsyncError("ERROR: module is read only", ExitCode.SYNTAX)
        return run_push(self, request, negotiated)

    def _send_line_error(self, message: str) -> None:
        try:
            self.stream.sendall(gr.encode_error(message))
        except OSError:
            pass

    def _fatal(self, exc: RsyncError) -> ExitCode:
        """MSG_ERROR + MSG_ERROR_EXIT after the setup phase (protocol-b §9.6)."""
        code = exc.exit_code
        self.log.warning("session failed (code {}): {}", int(code), exc)
        if self.outbox is None:
            return code
        self.exit_delay_s += EXIT_DELAY_S
        text = str(exc)
        if not exc.bare and not text.startswith(("ERROR", "rsync", "@ERROR")):
            text = f"rsync: [{self.role}] {text}"
        self.outbox.send_msg(MsgCode.ERROR, (text.rstrip("\n") + "\n").encode("utf-8", "replace"))
        if self.role == "sender" and not self.input_buffered:
            # a pull refused while rsyncd parses its options: the client sees the text, then
            # the reset before any exit message, and ends with its own code 10 (as with rsyncd)
            self.closing = Closing.RESET
            return code
        what = EXIT_TEXT.get(code, "error")
        trailer = f"rsync error: {what} (code {int(code)}) at backupd [{self.role}=backupd-{__version__}]\n"
        self.outbox.send_msg(MsgCode.ERROR, trailer.encode())
        protocol = self.request.protocol if self.request is not None else 31
        # cleanup.c _exit_cleanup: MSG_ERROR_EXIT only at protocol 31+ or from a running receiver
        if protocol >= 31 or self.input_buffered:
            self.outbox.send_msg(MsgCode.ERROR_EXIT, encode_int32(int(code)))
        # cleanup.c _exit_cleanup: only a receiver or a protocol 31+ peer waits for the client's EOF
        if not self.input_buffered or (self.role == "sender" and protocol < 31):
            self.closing = Closing.RESET
        return code

    def exit_unread(self, code: ExitCode) -> None:
        """End as rsyncd's sender does once it has stopped reading (io_end_buffering_in).

        cleanup.c _exit_cleanup: a failing server sleeps 100 ms and exits
        without reading on. Its MSG_ERROR_EXIT stays queued: a sender flushes
        messages only while it does I/O, and it does none after that. The
        kernel then resets the connection only if the client's answer (its own
        MSG_ERROR_EXIT) lies unread: a client that answered within those
        100 ms prints ``read error: Connection reset by peer (104)``, a slower
        one reads EOF. Call with the role's output flushed.
        """
        if code:
            self.exit_delay_s += EXIT_DELAY_S
        self.closing = Closing.EXIT

    def _close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
        if self.exit_delay_s:
            time.sleep(self.exit_delay_s)
        if self.closing is Closing.RESET:
            abort(self.stream)
        elif self.closing is Closing.EXIT:
            try:
                self.stream.close()
            except OSError:
                pass
        else:
            self._close_politely()
        if self.request is not None and self.request.root_fd is not None:
            os.close(self.request.root_fd)
            self.request.root_fd = None
        discard_view(self.view_dir)
        self.view_dir = None

    def _close_politely(self) -> None:
        try:
            self.stream.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.inbox.drain()
        try:
            self.stream.close()
        except OSError:
            pass


def _dash_path_arg(paths: list[bytes], module: str) -> str | None:
    """A path argument that rsyncd would parse as an option, as text; None if none.

    rsyncd strips the module name from each path argument before it parses
    its argv with popt (clientserver.c rsync_module: read_args, then
    parse_arguments), so ``mod/-x`` reaches popt as the unknown option ``-x``
    even after the client's ``--``.
    """
    prefix = module.encode() + b"/"
    for arg in paths:
        rest = arg[len(prefix):] if arg.startswith(prefix) else arg
        if rest.startswith(b"-") and rest not in (b"-", b"--"):
            return rest.decode("utf-8", "replace")
    return None


def match_auth_rule(module: ModuleConfig, user: str) -> tuple[AuthUser, str | None] | None:
    """The ``auth users`` rule that decides for ``user``, and the group it matched, or None (refused).

    The first rule whose name (or, for ``@group``, one of the user's group
    names) matches by wildcard decides; a ``:deny`` rule or a user name
    starting with ``#`` refuses. Passwords are not checked here. Source:
    rsync authenticate.c auth_server().
    """
    groups: list[str] | None = None
    for entry in module.auth_users:
        matched_group = None
        if entry.is_group:
            groups = sorted(_user_groups(user)) if groups is None else groups
            matched_group = next((g for g in groups if fnmatch.fnmatchcase(g, entry.name)), None)
            if matched_group is None:
                continue
        elif not fnmatch.fnmatchcase(user, entry.name):
            continue
        if entry.access == "deny" or user.startswith("#"):
            return None
        return entry, matched_group
    return None


def _signed(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _effective_timeout(module_s: int, client_s: int) -> int:
    values = [t for t in (module_s, client_s) if t and t > 0]
    return min(values) if values else 0


def _user_groups(user: str) -> set[str]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return set()
    return {grp.getgrgid(g).gr_name for g in os.getgrouplist(user, pw.pw_gid) if _has_group(g)}


def _has_group(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


class HandshakeTimeout(DaemonRefusal):
    """The client did not finish greeting, module line and auth in time."""


@contextmanager
def handshake_deadline(seconds: float) -> Iterator[None]:
    """Raise HandshakeTimeout in the block once ``seconds`` have passed (SIGALRM).

    A deadline for the whole pre-auth phase: a client that trickles one byte
    at a time cannot stretch it, as it can a per-read timeout (the slowloris
    class that rsyncd 3.5.0 cuts at 60 s). Only in the main thread (signals
    are delivered there); elsewhere the per-read timeout alone applies.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(_signum, _frame):
        raise HandshakeTimeout(f"handshake not completed within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_session(stream: Stream, ctx: SessionContext) -> ExitCode:
    """Run one client session to its end. Never raises."""
    session = Session(stream, ctx)
    ops_metrics.session_started(session)  # ops hook: backupd/ops/metrics.py
    code = session.run()
    ops_metrics.session_ended(session, code)  # ops hook: sessions, bytes in/out
    return code


__all__ = ["BackupdError", "ModuleRequest", "Session", "SessionContext", "match_auth_rule", "run_session"]
