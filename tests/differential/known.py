"""Known differences between backupd and stock rsyncd, found by the differential harness.

``KNOWN`` maps a scenario name to the id of its difference (an xfail,
strict); a value ``(id, {combo ids})`` limits the xfail to those combos
(``c3.5.0-hist-no`` ...). ``DIFFERENCES`` describes each id in one line (see
DIFFERENCES.md). Fixed one? Delete its line here and in DIFFERENCES.md.
"""

from __future__ import annotations

DIFFERENCES: dict[str, str] = {}

KNOWN: dict[str, str | tuple[str, set[str]]] = {}
