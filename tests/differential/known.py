"""Known differences between backupd and stock rsyncd, found by the differential harness.

``KNOWN`` maps a scenario name to the id of its difference: the scenario is
an xfail (strict) in every combo, or, for a value ``(id, {combo ids})``, only
in those combos (``c3.5.0-hist-no``, ``c3.2.7-hist-yes``, ``c3.5.0-hist-yes``,
``c3.2.7-hist-no``). ``DIFFERENCES`` describes each id in one line; the same
list, with the scenarios, is DIFFERENCES.md. Fixed one? Delete its lines here
(and in DIFFERENCES.md): an xfail that passes fails the run.
"""

from __future__ import annotations

DIFFERENCES: dict[str, str] = {
    "DIFF-034": "--protocol=26 and older: rsyncd serves them (3.5.0 speaks 20-32); backupd refuses "
    "below 27 with '@ERROR: protocol version 26 is too old' (exit 5)",
}

KNOWN: dict[str, str | tuple[str, set[str]]] = {
    "proto26-refused": "DIFF-034",
}
