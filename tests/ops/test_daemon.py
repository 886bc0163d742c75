"""``backupd serve`` execs the lean daemon (ops/daemon.py): same pid, no CLI framework, same errors.

The listener's memory is shared by every forked session and held for the
daemon's life, so what it imports is what each session's PSS carries.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backupd.ops.daemon import ServeOptions, main, one_blas_thread


def test_listener_runs_without_the_cli_framework(backupd_server, tmp_path) -> None:
    """The pid the user started still listens, still shows `backupd serve`, and maps no typer/pydantic."""
    (tmp_path / "m").mkdir()
    server = backupd_server({"modules": {"m": {"path": str(tmp_path / "m"), "read only": False}}})
    pid = server.proc.pid  # exec keeps the pid: a supervisor's SIGTERM still reaches the listener
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"backupd.ops.daemon" in cmdline
    assert b"serve" in cmdline and b"--config" in cmdline  # the original command line, for ps and pgrep -f
    assert "_pydantic_core" not in Path(f"/proc/{pid}/maps").read_text()  # typer coerces with pydantic
    out = subprocess.run(["rsync", "--list-only", server.url("m")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert server.stop() == 0  # SIGTERM to the exec'd listener: a clean exit


@pytest.fixture
def serve_cmd() -> list[str]:
    return [sys.executable, "-m", "backupd", "serve"]


def test_port_in_use_exits_10_with_one_line(serve_cmd, tmp_path) -> None:
    """A port that cannot be bound: exit 10 and one line naming it, from the daemon after the exec."""
    (tmp_path / "m").mkdir()
    conf = tmp_path / "c.yaml"
    conf.write_text(f"modules:\n  m:\n    path: {tmp_path / 'm'}\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([*serve_cmd, "--config", str(conf), "--address", "127.0.0.1", "--port", str(port)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 10
    assert f"backupd: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr.splitlines()
    assert "Traceback" not in done.stderr


def test_config_error_exits_1_with_file_and_line(serve_cmd, tmp_path) -> None:
    """A bad configuration is reported by the daemon as the CLI reports it: `backupd: config error: ...`, exit 1."""
    conf = tmp_path / "rsyncd.conf"
    conf.write_text("[m]\n    path = /nonexistent\n    max connections = lots\n")
    done = subprocess.run([*serve_cmd, "--config", str(conf), "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("backupd: config error: ")]
    assert lines and str(conf) in lines[0] and "max connections" in lines[0]
    assert "Traceback" not in done.stderr


@given(
    config=st.none() | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1),
    port=st.none() | st.integers(0, 65535),
    address=st.none() | st.sampled_from(["127.0.0.1", "::1", "0.0.0.0"]),
    log_json=st.booleans(),
    ssh_port=st.none() | st.integers(0, 65535),
)
def test_options_round_trip(config, port, address, log_json, ssh_port) -> None:
    opts = ServeOptions(config=None if config is None else Path(config), port=port, address=address,
                        log_json=log_json, ssh_port=ssh_port)
    assert ServeOptions.from_json(opts.to_json()) == opts


@pytest.mark.parametrize("arg", [[], ["not json"], ["[1, 2]"], ['{"colour": "red"}']])
def test_bad_options_argument_exits_2(arg, capsys) -> None:
    assert main(arg) == 2
    assert capsys.readouterr().err.startswith("backupd: daemon: bad options argument")


def test_sessions_get_one_blas_thread_unless_the_operator_chose(monkeypatch) -> None:
    """numpy reads OPENBLAS_NUM_THREADS when it loads in a session; an operator's own value stands."""
    env: dict[str, str] = {}
    one_blas_thread(env)
    assert env == {"OPENBLAS_NUM_THREADS": "1"}
    env = {"OPENBLAS_NUM_THREADS": "2"}
    one_blas_thread(env)
    assert env == {"OPENBLAS_NUM_THREADS": "2"}
    from backupd.ops import daemon

    def load(opts):
        raise RuntimeError("stop")

    seen = []
    monkeypatch.setattr(daemon, "one_blas_thread", lambda: seen.append("set"))
    monkeypatch.setattr(daemon, "load", load)
    for run in (daemon.run_stdio, daemon.run_daemon):
        with pytest.raises(RuntimeError, match="stop"):
            run(ServeOptions())
    assert seen == ["set", "set"]  # both ways a daemon starts set it before any session
