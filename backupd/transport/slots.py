"""``max connections`` across worker processes: one locked byte range per slot.

Like rsyncd's ``lock file``: a session holds an fcntl lock on one of the
module's N slots for as long as its process lives, so the count holds
across processes and a killed session frees its slot at once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

from backupd.config.model import ModuleConfig

SLOT_BYTES = 4
MODULE_STRIDE = 1 << 20


def default_lock_path(config_source: Path | None) -> Path:
    """A lock file per configuration, in the temp dir, for sessions with no listener (stdio).

    The daemon's listener passes its own anonymous lock file instead
    (:func:`anonymous_lock_file`); this shared path is opened with
    :func:`open_private_lock`, which refuses one planted by another user.
    """
    key = hashlib.sha1(os.fsencode(str(config_source or "embedded"))).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"backupd-{os.getuid()}-{key}.lock"


def anonymous_lock_file() -> int:
    """An unnamed lock file (memfd) for the listener; forked sessions inherit it.

    No other process can open it, so nobody outside the daemon can hold its
    slots (a named file in a shared temp dir could be created first, or
    locked, by any local user).
    """
    return os.memfd_create("backupd-slots", os.MFD_CLOEXEC)


def open_private_lock(path: Path) -> int:
    """Open or create the lock file ``path`` without following a symlink; it must be ours.

    Raises:
        OSError: ``path`` is a symlink (ELOOP), or belongs to another user or
            is writable by others (EPERM): someone else could hold its slots.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise PermissionError(errno.EPERM, f"{path}: lock file owned by uid {st.st_uid} or writable by others")
    return fd


def claim_slot(module: ModuleConfig, module_index: int, lock: Path | int) -> int | None:
    """Lock a free slot of ``module``; return the open fd holding it, or None if all are taken.

    Args:
        module: its ``max connections`` and optional ``lock file``.
        module_index: the module's place in the configuration (its byte range).
        lock: the listener's inherited lock fd, or a path to open with
            :func:`open_private_lock`. A module's own ``lock file`` wins, as
            in rsyncd, and is opened as rsyncd opens it.

    The fd must stay open for the whole session. Modules without a limit
    return -1 (nothing held).

    Raises:
        OSError: the lock file cannot be opened, or is not private.
    """
    limit = module.max_connections
    if limit <= 0:
        return -1
    if module.lock_file is not None:
        fd, owned = os.open(module.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), True
    elif isinstance(lock, int):
        fd, owned = lock, False
    else:
        fd, owned = open_private_lock(lock), True
    base = module_index * MODULE_STRIDE
    for slot in range(limit):
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, SLOT_BYTES, base + slot * SLOT_BYTES, os.SEEK_SET)
            return fd
        except OSError:
            continue
    if owned:
        os.close(fd)
    return None
