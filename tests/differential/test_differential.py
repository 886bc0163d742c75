"""Every scenario of the catalogue, against stock rsyncd (the oracle) and backupd.

A known difference is an xfail named in ``known.py`` (one line per scenario).
"""

from __future__ import annotations

import pytest

from tests.differential.conftest import combo_id, combos
from tests.differential.harness import run_scenario
from tests.differential.known import DIFFERENCES, KNOWN
from tests.differential.scenarios import SCENARIOS


def _marks(name: str, cid: str):
    known = KNOWN.get(name)
    if known is None:
        return ()
    diff_id, only = (known, None) if isinstance(known, str) else known
    if only is not None and cid not in only:
        return ()
    return (pytest.mark.xfail(strict=True, reason=f"{diff_id}: {DIFFERENCES[diff_id]}"),)


def _params():
    out = []
    for version, history in combos():
        cid = combo_id(version, history)
        for sc in SCENARIOS:
            out.append(
                pytest.param(version, history, sc, id=f"{cid}/{sc.name}", marks=_marks(sc.name, cid))
            )
    return out


@pytest.mark.parametrize(("version", "history", "scenario"), _params())
def test_scenario(version, history, scenario, rsync_clients, server_pairs):
    servers, base = server_pairs.get(scenario, history)
    ports = {kind: s.port for kind, s in servers.items()}
    problems = run_scenario(scenario, rsync_clients[version], ports, base, history)
    if problems:
        log = servers["backupd"].log()[-3000:]
        pytest.fail(
            f"scenario {scenario.name} differs:\n" + "\n".join(problems)
            + f"\n--- backupd log (tail)\n{log}",
            pytrace=False,
        )


def test_catalogue_size():
    assert len(SCENARIOS) >= 120
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS), "scenario names must be unique"
    assert set(KNOWN) <= {s.name for s in SCENARIOS}, "KNOWN names a scenario that is gone"
