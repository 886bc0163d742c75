"""Every filesystem effect on a module: confined tree, staged writes, history.

Wire paths stay ``bytes`` relative to the module root; see ``tree.py`` for
the confinement and error rules.
"""

from backupd.storage.fsops import DeleteCounts
from backupd.storage.history import HistoryStore
from backupd.storage.staging import Basis, StagedFile
from backupd.storage.tree import ModuleTree

__all__ = ["Basis", "DeleteCounts", "HistoryStore", "ModuleTree", "StagedFile"]
