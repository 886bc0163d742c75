"""``auth users`` with ``@group`` rules and ``@group:`` secrets lines, judged as stock
rsyncd judges them (authenticate.c auth_server / check_secret), same config for both.
"""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from tests.interop.conftest import show

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name

# (auth users, secrets, login user, password)
CASES = {
    "group-line-password": (f"@{MY_GROUP}", {ME: "userpw", f"@{MY_GROUP}": "grouppw"}, ME, "grouppw"),
    "user-line-password-under-group-rule": (f"@{MY_GROUP}", {ME: "userpw", f"@{MY_GROUP}": "grouppw"}, ME,
                                            "userpw"),
    "group-wildcard": (f"@{MY_GROUP[:2]}*", {f"@{MY_GROUP}": "grouppw"}, ME, "grouppw"),
    "user-rule-ignores-group-line": ("*", {f"@{MY_GROUP}": "grouppw"}, ME, "grouppw"),
    "at-user-cannot-use-a-group-line": ("*", {"@daemon": "pw"}, "@daemon", "pw"),
    "deny-rule-first": (f"{ME}:deny, @{MY_GROUP}", {ME: "userpw", f"@{MY_GROUP}": "grouppw"}, ME, "userpw"),
    "wrong-password": (f"@{MY_GROUP}", {ME: "userpw", f"@{MY_GROUP}": "grouppw"}, ME, "nope"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_auth_rules_match_rsyncd(make_targets, rsync_clients, tmp_path, case):
    users, secrets, user, password = CASES[case]
    client = rsync_clients["3.5.0"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    results = {}
    for kind, target in make_targets(params={"auth users": users, "history": False}, secrets=secrets).items():
        results[kind] = client.run("-a", f"{src}/", target.url(user=user), password=password, timeout=30)
    theirs, mine = results["rsyncd"], results["backupd"]
    assert mine.returncode == theirs.returncode, (show(theirs), show(mine))
    assert mine.stderr.splitlines()[:1] == theirs.stderr.splitlines()[:1], (show(theirs), show(mine))
