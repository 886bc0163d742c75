"""backupd: an rsyncd-compatible backup server that never loses a version."""

__version__ = "0.1.0"
