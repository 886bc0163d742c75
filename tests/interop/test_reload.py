"""``backupd serve`` re-reads its rsyncd.conf on SIGHUP, and a module whose path
is missing is refused per session as stock rsyncd refuses it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, render_rsyncd_conf
from tests.interop.conftest import assert_ok, digest, show, write_random

VERSIONS = ("3.5.0", "3.2.7")


@pytest.fixture(params=VERSIONS, ids=[f"c{v}" for v in VERSIONS])
def client(request, rsync_clients):
    return rsync_clients[request.param]


def conf_text(port: int, modules: dict[str, Path], **extra) -> str:
    mods = {name: {"path": path, "read only": False, **extra} for name, path in modules.items()}
    return render_rsyncd_conf(port, {"reverse lookup": False}, mods)


def wait_for_log(server, text: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = server.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the server log:\n{server.log()}")


def test_sighup_adds_a_module_keeps_running_sessions_and_survives_a_broken_file(
    backupd_server, client, tmp_path
):
    port = free_port()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(conf_text(port, {"first": first}))
    server = backupd_server(conf, port=port)
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "big.bin", 3 << 20, seed=7)

    # a session that runs across the reload: 3 MiB at 1 MB/s
    slow = subprocess.Popen(
        [*client.argv_prefix, "-a", "--bwlimit=1000", f"{src}/", server.url("first")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    try:
        time.sleep(0.7)
        assert slow.poll() is None, "the slow push ended before the reload"
        new_module = client.run("-a", f"{src}/", server.url("second"))
        assert new_module.returncode == 5 and "Unknown module 'second'" in new_module.stderr, show(new_module)

        conf.write_text(conf_text(port, {"first": first, "second": second}))
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for_log(server, "added: second")
        assert_ok(client.run("-a", f"{src}/", server.url("second")))
        assert digest(second / "big.bin") == digest(src / "big.bin")
        assert slow.poll() is None, "the running session did not span the reload"
        out, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
    assert slow.returncode == 0, (out, err)
    assert digest(first / "big.bin") == digest(src / "big.bin")

    conf.write_text(conf.read_text() + "\n[broken\n")
    os.kill(server.proc.pid, signal.SIGHUP)
    log = wait_for_log(server, "configuration not reloaded")
    assert "section header" in log
    assert server.proc.poll() is None
    (src / "more.txt").write_text("after the broken reload\n")
    assert_ok(client.run("-a", f"{src}/", server.url("second")))
    assert (second / "more.txt").read_text() == "after the broken reload\n"


@pytest.mark.parametrize("use_chroot", [True, False], ids=["chroot", "no-chroot"])
def test_missing_module_path_is_refused_as_rsyncd_refuses_it(
    stock_rsyncd, backupd_server, client, tmp_path, use_chroot
):
    missing = tmp_path / "not-there"
    good = tmp_path / "good"
    good.mkdir()
    modules = {"gone": {"path": missing, "read only": False, "use chroot": use_chroot},
               "good": {"path": good, "read only": False, "use chroot": use_chroot}}
    if os.geteuid() != 0 and use_chroot:
        pytest.skip("a non-root rsyncd cannot chroot at all")
    rsyncd = stock_rsyncd(modules)
    port = free_port()
    conf = tmp_path / "backupd.conf"
    conf.write_text(render_rsyncd_conf(port, {"reverse lookup": False}, modules))
    ours = backupd_server(conf, port=port)
    assert "module gone: path" in wait_for_log(ours, "listening")

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a\n")
    for args in (("-a", f"{src}/"), ()):  # a push, then a listing
        theirs = client.run(*args, rsyncd.url("gone"))
        mine = client.run(*args, ours.url("gone"))
        assert mine.returncode == theirs.returncode == 5, (show(theirs), show(mine))
        first_line = theirs.stderr.splitlines()[0]
        assert first_line in ("@ERROR: chroot failed", "@ERROR: chdir failed")
        assert mine.stderr.splitlines()[0] == first_line, (show(theirs), show(mine))
    assert not missing.exists()
    assert_ok(client.run("-a", f"{src}/", ours.url("good")))
    assert ours.proc.poll() is None
