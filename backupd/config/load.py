"""Pick the reader for a config file by its name.

``.yaml``/``.yml`` -> ``yaml_conf``; anything else is an rsyncd.conf. Without
a file, the embedded default (``default.py``) is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from backupd.config.default import embedded_default
from backupd.config.model import DaemonConfig
from backupd.config.rsyncd_conf import load_rsyncd_conf
from backupd.config.yaml_conf import load_yaml_conf

YAML_SUFFIXES = (".yaml", ".yml")


def is_yaml_path(path: Path) -> bool:
    """True if ``path`` names a YAML config (by suffix, any case)."""
    return Path(path).suffix.lower() in YAML_SUFFIXES


def load_config(path: Path | None) -> DaemonConfig:
    """Load the daemon configuration from ``path``.

    Args:
        path: an rsyncd.conf or a ``.yaml``/``.yml`` file. None means the
            embedded default under ``./backupd-data`` (created on first use;
            call ``default.embedded_default`` directly to get its password).

    Raises:
        ConfigError: the file cannot be read or is wrong (``file:line: ...``).
    """
    if path is None:
        return embedded_default()[0]
    path = Path(path)
    if is_yaml_path(path):
        return load_yaml_conf(path)
    return load_rsyncd_conf(path)


def module_path_problems(config: DaemonConfig) -> list[str]:
    """One line per module whose ``path`` is not a directory the server can open.

    Such a module is still served: each session to it is refused with
    rsyncd's ``@ERROR: chroot failed`` (or ``chdir failed``), exit 5, while
    the other modules work, as with stock rsyncd. The lines are for the log
    at start and on reload.
    """
    problems = []
    for module in config.modules.values():
        try:
            os.close(os.open(module.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            problems.append(f"module {module.name}: path {module.path}: {exc.strerror}; its sessions will be refused")
    return problems
