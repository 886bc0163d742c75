"""``max connections`` across worker processes: one locked byte range per slot.

Like rsyncd's ``lock file``: a session holds an fcntl lock on one of the
module's N slots for as long as its process lives, so the count holds
across processes and a killed session frees its slot at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

from backupd.config.model import ModuleConfig

SLOT_BYTES = 4
MODULE_STRIDE = 1 << 20


def default_lock_path(config_source: Path | None) -> Path:
    """A lock file per configuration, in the temp dir (rsyncd: /var/run/rsyncd.lock)."""
    key = hashlib.sha1(os.fsencode(str(config_source or "embedded"))).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"backupd-{os.getuid()}-{key}.lock"


def claim_slot(module: ModuleConfig, module_index: int, lock_path: Path) -> int | None:
    """Lock a free slot of ``module``; return the open fd holding it, or None if all are taken.

    The fd must stay open for the whole session. Modules without a limit
    return -1 (nothing held).

    Raises:
        OSError: the lock file cannot be opened.
    """
    limit = module.max_connections
    if limit <= 0:
        return -1
    path = module.lock_file or lock_path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    base = module_index * MODULE_STRIDE
    for slot in range(limit):
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, SLOT_BYTES, base + slot * SLOT_BYTES, os.SEEK_SET)
            return fd
        except OSError:
            continue
    os.close(fd)
    return None
