"""``hosts allow`` / ``hosts deny`` against stock rsyncd with the same settings:
name patterns with and without reverse lookup, forward lookup, and the
``access denied`` line the client prints.
"""

from __future__ import annotations

import pytest

from tests.helpers import free_port, render_rsyncd_conf
from tests.interop.conftest import show

CASES = {
    "deny-localhost": {"hosts deny": "localhost"},
    "allow-localhost": {"hosts allow": "localhost"},
    "allow-other-net": {"hosts allow": "10.0.0.0/8"},
    "deny-address": {"hosts deny": "127.0.0.1"},
    "deny-wildcard-name": {"hosts deny": "*.example.invalid"},
    "allow-wildcard-name": {"hosts allow": "local*"},
    "deny-unresolvable-name": {"hosts deny": "no-such-host.invalid"},
    "deny-localhost-no-forward": {"hosts deny": "localhost", "forward lookup": False},
    "allow-list-and-deny": {"hosts allow": "10.1.1.1, 127.0.0.0/8", "hosts deny": "*"},
}


@pytest.mark.parametrize("reverse", [False, True], ids=["no-reverse", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_host_rules_match_rsyncd(stock_rsyncd, backupd_server, rsync_clients, tmp_path, case, reverse):
    client = rsync_clients["3.5.0"]
    module = tmp_path / "m"
    module.mkdir()
    (module / "f").write_text("f\n")
    params = {"path": module, "read only": True, **CASES[case]}
    rsyncd = stock_rsyncd({"m": params}, global_params={"reverse lookup": reverse})
    port = free_port()
    conf = tmp_path / "backupd.conf"
    conf.write_text(render_rsyncd_conf(port, {"reverse lookup": reverse}, {"m": params}))
    ours = backupd_server(conf, port=port)
    for what in (("-r",), ()):  # a pull of the module, then the module list
        url = rsyncd.url("m") if what else f"rsync://127.0.0.1:{rsyncd.port}/"
        theirs = client.run(*what, url, *( [f"{tmp_path}/out-theirs/"] if what else []))
        url = ours.url("m") if what else f"rsync://127.0.0.1:{ours.port}/"
        mine = client.run(*what, url, *( [f"{tmp_path}/out-mine/"] if what else []))
        assert mine.returncode == theirs.returncode, (show(theirs), show(mine))
        assert mine.stderr.splitlines()[:1] == theirs.stderr.splitlines()[:1], (show(theirs), show(mine))
        assert [line.split()[0] for line in mine.stdout.splitlines()] == \
            [line.split()[0] for line in theirs.stdout.splitlines()], (show(theirs), show(mine))
