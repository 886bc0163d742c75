"""One remote-shell session: ``rsync --server ... . MODULE/PATH`` run by an SSH login.

The stock client reached over ``rsync -e ssh SRC user@host:MODULE/PATH``
execs the server with its options on the command line instead of sending
them after ``@RSYNCD: OK``, and both sides exchange their protocol versions
as 4-byte integers instead of ``@RSYNCD:`` lines. Everything after that is
the daemon session's: module access rules, ``max connections``, the
uid/gid switch, refuse options, setup, push and pull roles, history.

The SSH user is the rsync auth user: it is already authenticated by its key
(or password), so the module's ``auth users`` only decide whether and how
(``:ro``/``:rw``/``:deny``, ``@group``) it may use the module, exactly as
after a daemon login. The first path component names the module.
Source: rsync main.c start_server(), compat.c setup_protocol() (the
``remote_protocol == 0`` branch), rsync-protocol-a.md §2.
"""

from __future__ import annotations

from pathlib import Path

from backupd.config.model import ModuleConfig
from backupd.errors import DaemonRefusal, ExitCode, ProtocolError
from backupd.ops import metrics as ops_metrics
from backupd.protocol.constants import MAX_PROTOCOL, MIN_PROTOCOL
from backupd.protocol.server_args import has_protected_args, parse_server_args_lenient
from backupd.protocol.wire import decode_int32, encode_int32
from backupd.roles.session import (
    AUTH_FAILED,
    AUTHENTICATED,
    ModuleRequest,
    Session,
    SessionContext,
    handshake_deadline,
    match_auth_rule,
)
from backupd.transport.stream import Stream

NO_MODULE = ModuleConfig(name="-", path=Path("/nonexistent"))  # only for framing an early refusal


def module_name_of(paths: list[bytes]) -> bytes:
    """The module the path arguments name: the first component, the same for every path.

    Args:
        paths: the path arguments after the ``.`` of ``rsync --server``,
            e.g. ``[b"backup/docs/"]``.

    Raises:
        DaemonRefusal: no path, an absolute path, a ``..`` component, or
            paths in different modules.
    """
    if not paths:
        raise DaemonRefusal("no module named: give MODULE/PATH after the host")
    names = set()
    for path in paths:
        if path.startswith(b"/"):
            raise DaemonRefusal(f"absolute path {path.decode('utf-8', 'replace')} refused: give MODULE/PATH")
        parts = path.split(b"/")
        if b".." in parts:
            raise DaemonRefusal(f"path {path.decode('utf-8', 'replace')} tries to leave its module")
        names.add(parts[0])
    if len(names) > 1:
        raise DaemonRefusal("all paths of one transfer must be in the same module")
    return names.pop()


class ShellSession(Session):
    """A :class:`Session` whose handshake is the remote-shell one (no ``@RSYNCD:`` lines).

    Args:
        stream: the SSH channel's byte stream (stdin/stdout of the command).
        ctx: configuration and peer, as for a daemon session.
        argv: the exec command's words after ``rsync``: ``--server``, the
            options, ``.``, the paths.
        user: the SSH login name (already authenticated).
    """

    def __init__(self, stream: Stream, ctx: SessionContext, argv: list[bytes], user: str) -> None:
        super().__init__(stream, ctx)
        self.argv, self.user = argv, user
        self._opts = None
        self._protocol: int | None = None
        self.log = self.log.bind(user=user, transport="ssh")

    def handshake(self) -> ModuleRequest:
        """Protocol versions, module, access, uid/gid switch; the options come from ``argv``.

        Raises:
            DaemonRefusal: unknown module, a path leaving it, host rules,
                ``max connections``, a user the module's ``auth users`` refuse.
        """
        with handshake_deadline(self.ctx.config.handshake_timeout_s):
            if has_protected_args([b"rsync", *self.argv]):
                self.argv = self.argv + self._read_protected_args()
            opts, error = parse_server_args_lenient(self.argv)
            self._opts = opts
            protocol = self._exchange_protocol()
            name = module_name_of(opts.paths).decode("utf-8", "replace")
            module = self.ctx.config.modules.get(name)
            if module is None:
                raise DaemonRefusal(f"Unknown module '{name}'")
            ops_metrics.session_module(self, module)  # ops hook: metrics labels, transfer log
            self._check_host(module)
            self._claim_slot(module)
            read_only = self._access(module)
            self._report(AUTHENTICATED)
            root_fd = self._enter_module(module)
            self.log = self.log.bind(module=module.name)
            return ModuleRequest(module, self.user, read_only, protocol, opts, error, root_fd)

    def _read_protected_args(self) -> list[bytes]:
        """``-s`` (``--secluded-args``): the real arguments come first on the stream.

        Wire: NUL-terminated words, ``rsync`` first (dropped here), an empty
        word ends the list; the rest (``.`` and the paths) follows the
        command line's options. Source: rsync main.c main() (``am_server &&
        protect_args``: read_args()), as the daemon's second argument list.

        Raises:
            ProtocolError: over 1024 arguments or one over 4096 bytes.
        """
        words = []
        for _ in range(1025):
            word = self.inbox.read_until_nul(4096)
            if not word:
                return words[1:] if words and words[0] == b"rsync" else words
            words.append(word)
        raise ProtocolError("secluded argument list over 1024 arguments")

    def _exchange_protocol(self) -> int:
        """Write our version, read the client's (int32 each); the session speaks the lower.

        Raises:
            DaemonRefusal: a client below protocol 30 (exit 2, as compat.c).
        """
        self.stream.sendall(encode_int32(MAX_PROTOCOL))
        remote = decode_int32(self.inbox.read_raw)
        if remote < MIN_PROTOCOL:
            raise DaemonRefusal(
                f"protocol version {remote} is too old: backupd speaks protocols {MIN_PROTOCOL}-{MAX_PROTOCOL}",
                ExitCode.PROTOCOL,
            )
        self._protocol = min(remote, MAX_PROTOCOL)
        return self._protocol

    def _access(self, module: ModuleConfig) -> bool:
        """True if the user gets the module read-only (rsync authenticate.c auth_server, key-authenticated).

        Raises:
            DaemonRefusal: ``auth failed on module X``, the daemon's text, when
                no rule of ``auth users`` admits the user.
        """
        if not module.auth_users:
            return module.read_only
        rule = match_auth_rule(module, self.user)
        if rule is None:
            self.log.warning("auth failed on module {} for SSH user {!r}", module.name, self.user)
            ops_metrics.auth_failed(module.name)  # ops hook
            self._report(AUTH_FAILED)
            raise DaemonRefusal(f"auth failed on module {module.name}")
        return {"ro": True, "rw": False}.get(rule[0].access or "", module.read_only)

    def _send_line_error(self, message: str) -> None:
        """A refusal before setup, framed as the client can read it in this mode.

        No ``@ERROR`` line exists here, so finish the setup and send ``@ERROR:
        message`` as MSG_ERROR + MSG_ERROR_EXIT: the client prints it and exits
        with the refusal's code, as after a daemon's ``@ERROR`` line.
        """
        if self._protocol is None or self._opts is None:
            return  # the client never sent its version: nothing can be framed
        request = ModuleRequest(NO_MODULE, self.user, True, self._protocol, self._opts, None)
        self._setup_for_error(request)
        if self.outbox is not None:
            self._fatal(DaemonRefusal(f"@ERROR: {message}"))


def run_shell_session(stream: Stream, ctx: SessionContext, *, argv: list[bytes], user: str) -> ExitCode:
    """Run one remote-shell session to its end; never raises (as ``session.run_session``)."""
    session = ShellSession(stream, ctx, argv, user)
    ops_metrics.session_started(session)  # ops hook: backupd/ops/metrics.py
    code = session.run()
    ops_metrics.session_ended(session, code)
    return code
