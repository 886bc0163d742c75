"""A worker process per session, as rsyncd forks one per connection.

The child runs the synchronous session and exits with its ExitCode; a crash
or a protocol error there never reaches the listener.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterable

from loguru import logger

from backupd.config.model import DaemonConfig
from backupd.errors import ExitCode
from backupd.roles.session import AUTH_FAIL_DELAY_S, AUTH_FAILED, AUTHENTICATED, SessionContext, run_session
from backupd.transport.stream import QuickAckSocket

EVENT_BYTES = {AUTHENTICATED: b"A", AUTH_FAILED: b"F"}


def trim_heap() -> None:
    """Give the listener's free heap pages back to the kernel (glibc ``malloc_trim(0)``).

    Start-up (config parsing, imports) leaves freed but resident heap in a
    listener (about 2 MB in the TCP one, 2.5 MB in the SSH one); every session
    forked from it would map those pages too. Called once each listener is set
    up, and by the TCP one after each reload. A libc without ``malloc_trim``
    (musl) is left as is. Never raises.
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def preload_session_modules() -> None:
    """Import the role modules once in the listener, so each forked session starts warm."""
    import importlib

    for name in ("backupd.roles.push", "backupd.roles.generator", "backupd.roles.receiver", "backupd.roles.sender"):
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a role not built yet must not stop the daemon
            logger.debug("preload of {} skipped: {}", name, exc)


def fork_session(
    conn: socket.socket,
    peer_addr: str,
    config: DaemonConfig,
    listeners: list[socket.socket],
    *,
    status_fd: int | None = None,
    close_fds: Iterable[int] = (),
    auth_fail_delay_s: float = AUTH_FAIL_DELAY_S,
    slot_fd: int | None = None,
    runner: Callable[[socket.socket, SessionContext], ExitCode] = run_session,
) -> int:
    """Fork a child that runs one session on ``conn``; return its pid (parent side).

    Args:
        conn: the accepted connection (the parent closes its copy).
        peer_addr: the client's address, for access rules and logs.
        config: the configuration in force for this session.
        listeners: the listening sockets, closed in the child.
        status_fd: the write end of a pipe to the listener; the child writes
            ``A`` once its client is past auth and ``F`` on a failed login
            (tcp.DaemonServer's pre-auth accounting). The parent keeps it open;
            close it there after the fork.
        close_fds: the listener's other descriptors, closed in the child.
        auth_fail_delay_s: how long the child waits before refusing a wrong login.
        slot_fd: the listener's lock file for ``max connections``.
        runner: what runs the session on ``conn`` (the SSH transport's
            remote-shell sessions pass ``shell_session.run_shell_session``).
    """
    session_id = uuid.uuid4().hex[:8]
    pid = os.fork()
    if pid:
        return pid
    code = ExitCode.CRASHED
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # an asyncio parent's (transport/ssh.py) self-pipe
        for listener in listeners:
            listener.close()
        for fd in close_fds:
            if fd != conn.fileno():
                try:
                    os.close(fd)
                except OSError:  # already closed
                    pass
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = QuickAckSocket.adopt(conn)  # the client's split writes wait for no delayed ACK
        ctx = SessionContext(config=config, peer_addr=peer_addr, session_id=session_id,
                             on_event=_event_writer(status_fd), auth_fail_delay_s=auth_fail_delay_s,
                             slot_fd=slot_fd)
        logger.bind(session=session_id).info("connection from {}", peer_addr)
        code = runner(conn, ctx)
        logger.bind(session=session_id).info("session ended with code {}", int(code))
    except BaseException:  # the child must never return into the listener's loop
        logger.exception("session {} crashed", session_id)
    finally:
        logger.complete()
        os._exit(int(code))


def _event_writer(status_fd: int | None) -> Callable[[str], None] | None:
    if status_fd is None:
        return None

    def write(event: str) -> None:
        os.write(status_fd, EVENT_BYTES[event])
        if event == AUTHENTICATED:
            os.close(status_fd)  # nothing more to say; the listener sees EOF too

    return write
