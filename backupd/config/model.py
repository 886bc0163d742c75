"""Frozen configuration model shared by every reader (rsyncd.conf, YAML, default).

Names follow rsyncd.conf parameters with underscores (``read only`` ->
``read_only``). Durations carry their unit in the name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AuthUser:
    """One entry of ``auth users``: a user name or ``@group``, with its access.

    ``access`` is ``"rw"``, ``"ro"`` or ``"deny"``; ``None`` means the module's
    own ``read only`` setting decides.
    """

    name: str
    is_group: bool = False
    access: str | None = None


@dataclass(frozen=True)
class ModuleConfig:
    """One ``[module]`` section. Defaults are rsyncd's, plus backupd's history."""

    name: str
    path: Path
    comment: str = ""
    read_only: bool = True
    write_only: bool = False
    list: bool = True
    auth_users: tuple[AuthUser, ...] = ()
    secrets_file: Path | None = None
    strict_modes: bool = True
    hosts_allow: tuple[str, ...] = ()
    hosts_deny: tuple[str, ...] = ()
    max_connections: int = 0
    lock_file: Path | None = None
    timeout_s: int = 0
    max_verbosity: int = 1  # the client's -v is capped at this (options.c limit_output_verbosity)
    refuse_options: tuple[str, ...] = ()
    filter: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    incoming_chmod: str | None = None
    outgoing_chmod: str | None = None
    dont_compress: tuple[str, ...] = ()
    transfer_logging: bool = False
    log_format: str = "%o %h [%a] %m (%u) %f %l"
    numeric_ids: bool = True
    munge_symlinks: bool = False
    open_noatime: bool | None = None  # None: the client's --open-noatime decides (clientserver.c lp_open_noatime)
    ignore_errors: bool = False
    uid: str | None = None
    gid: str | None = None
    fake_super: bool = False
    # backupd confines every path itself (dir-fd walks) and never chroots; the
    # setting picks rsyncd's refusal text for a missing path (chroot/chdir failed)
    use_chroot: bool = True
    forward_lookup: bool = True  # hosts allow/deny: resolve plain host names (access.c)
    fsync: bool = False
    history: bool = True
    history_dir: str = "history-backup"
    history_keep_days: int = 7
    # the version catalog (storage/catalog.py): on with history; its directory
    # (None: the state dir, see catalog.default_state_dir), never inside the module
    catalog: bool = True
    catalog_dir: Path | None = None
    # `serve` re-reads every stored version against the catalog this often (0: never;
    # ops/verify_schedule.py); `verify interval = 1d`, also 3600, 90s, 30m, 6h
    verify_interval_s: int = 0


@dataclass(frozen=True)
class DaemonConfig:
    """The whole daemon: global settings and the modules in file order."""

    modules: dict[str, ModuleConfig] = field(default_factory=dict)
    port: int = 873
    address: str | None = None
    motd_file: Path | None = None
    log_file: Path | None = None
    pid_file: Path | None = None
    reverse_lookup: bool = True
    max_connections: int = 0
    # backupd's own: greeting, module line and auth must complete within this
    # many seconds (a deadline for the whole pre-auth phase, not per read)
    handshake_timeout_s: int = 60
    # the SSH transport (transport/ssh.py): off when the port is None or 0;
    # `ssh authorized keys` may hold OpenSSH's %u (the login name)
    ssh_port: int | None = None
    ssh_address: str | None = None
    ssh_host_key: Path | None = None
    ssh_authorized_keys: Path | None = None
    ssh_password_auth: bool = False
    source: Path | None = None
    warnings: tuple[str, ...] = ()
