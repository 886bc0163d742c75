import os
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backupd.config.model import DaemonConfig, ModuleConfig
from backupd.errors import ConfigError
from backupd.ops import metrics
from backupd.ops.metrics import (
    ARCHIVE_FILE,
    CompactingCollector,
    HistoryCollector,
    history_usage,
    parse_address,
)


def samples(registry) -> dict[tuple, float]:
    """``{(sample name, sorted label items): value}`` of a registry's text exposition."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9873", ("127.0.0.1", 9873)),
        (":9100", ("0.0.0.0", 9100)),
        ("9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("host.example:1", ("host.example", 1)),
    ],
)
def test_parse_address(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "host", "host:0", "host:65536", "host:x1", "[::1]"])
def test_parse_address_refuses(text):
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_address(text)


# ---------------------------------------------------------------- across processes


@pytest.fixture
def multiproc(tmp_path):
    path = tmp_path / "mp"
    path.mkdir()
    metrics.enable_server_metrics(path)
    collector = CompactingCollector(path)
    registry = CollectorRegistry()
    registry.register(collector)
    yield path, collector, registry
    collector.close()
    metrics.disable_server_metrics()


def fake_session(module: ModuleConfig | None, bytes_read: int, bytes_written: int):
    ctx = SimpleNamespace(peer_addr="127.0.0.1", session_id="x", peer_host=lambda: None)
    return SimpleNamespace(
        ctx=ctx,
        inbox=SimpleNamespace(bytes_read=bytes_read),
        outbox=SimpleNamespace(bytes_written=bytes_written),
    )


def run_worker(body) -> None:
    """Fork a child that runs ``body()`` as a session worker does, then exits."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def one_push(module: ModuleConfig, files: list[int], code: int = 0):
    def body():
        session = fake_session(module, bytes_read=1000 + sum(files), bytes_written=50)
        metrics.session_started(session)
        metrics.session_module(session, module)
        for size in files:
            metrics.file_received(module.name, size, size // 2)
        metrics.files_deleted(module.name, 3)
        metrics.session_ended(session, code)

    return body


def test_counters_from_worker_processes_add_up_and_survive_compaction(multiproc, tmp_path):
    path, collector, registry = multiproc
    data = ModuleConfig(name="data", path=tmp_path)
    run_worker(one_push(data, [10, 20]))
    run_worker(one_push(data, [5], code=23))
    run_worker(lambda: metrics.auth_failed("data"))

    got = samples(registry)  # the scrape compacts the dead workers' files first
    m = (("module", "data"),)
    assert got[("backupd_sessions_total", (("exit_code", "0"), *m))] == 1
    assert got[("backupd_sessions_total", (("exit_code", "23"), *m))] == 1
    assert got[("backupd_session_errors_total", (("exit_code", "23"), *m))] == 1
    assert got[("backupd_files_received_total", m)] == 3
    assert got[("backupd_file_bytes_received_total", m)] == 35
    assert got[("backupd_literal_bytes_received_total", m)] == 5 + 10 + 2
    assert got[("backupd_received_bytes_total", m)] == 1030 + 1005
    assert got[("backupd_sent_bytes_total", m)] == 100
    assert got[("backupd_files_deleted_total", m)] == 6
    assert got[("backupd_auth_failures_total", m)] == 1
    assert got[("backupd_sessions_started_total", ())] == 2
    assert got[("backupd_sessions_active", ())] == 0
    left = sorted(p.name for p in path.iterdir())
    assert ARCHIVE_FILE in left
    assert all(str(os.getpid()) in name for name in left if name != ARCHIVE_FILE)  # only ours

    run_worker(one_push(data, [1]))
    again = samples(registry)
    assert again[("backupd_sessions_total", (("exit_code", "0"), *m))] == 2
    assert again[("backupd_files_received_total", m)] == 4
    assert again[("backupd_sessions_started_total", ())] == 3


def test_a_running_worker_is_counted_live_and_not_compacted(multiproc, tmp_path):
    path, collector, registry = multiproc
    data = ModuleConfig(name="data", path=tmp_path)
    read_fd, write_fd = os.pipe()
    go_fd, wait_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        session = fake_session(data, 10, 0)
        metrics.session_started(session)
        metrics.session_module(session, data)
        metrics.file_received("data", 7, 7)
        os.write(write_fd, b"x")
        os.read(go_fd, 1)  # stay alive until the parent has scraped
        metrics.session_ended(session, 0)
        os._exit(0)
    os.read(read_fd, 1)
    during = samples(registry)
    assert during[("backupd_sessions_active", ())] == 1
    assert during[("backupd_files_received_total", (("module", "data"),))] == 1
    assert collector.compact() == 0  # alive: its files stay
    os.write(wait_fd, b"x")
    os.waitpid(pid, 0)
    after = samples(registry)
    assert after[("backupd_sessions_active", ())] == 0
    assert after[("backupd_sessions_total", (("exit_code", "0"), ("module", "data")))] == 1
    for fd in (read_fd, write_fd, go_fd, wait_fd):
        os.close(fd)


def test_a_killed_worker_leaves_no_phantom_active_session(multiproc, tmp_path):
    _, _, registry = multiproc
    data = ModuleConfig(name="data", path=tmp_path)

    def crash():
        session = fake_session(data, 0, 0)
        metrics.session_started(session)
        metrics.session_module(session, data)
        os._exit(0)  # never reaches session_ended, like a SIGKILLed worker

    run_worker(crash)
    got = samples(registry)
    assert got[("backupd_sessions_active", ())] == 0
    assert got[("backupd_sessions_started_total", ())] == 1


def test_hooks_are_harmless_when_metrics_are_off(tmp_path):
    assert metrics._SERVER is None
    session = fake_session(None, 1, 1)
    metrics.session_started(session)
    metrics.auth_failed("x")
    metrics.file_received("x", 1, 1)
    metrics.session_ended(session, 5)
    assert metrics.session_record(session.outbox) is None


# ---------------------------------------------------------------- history, HTTP


def test_history_bytes_and_files_per_module(tmp_path):
    a, b, off = tmp_path / "a", tmp_path / "b", tmp_path / "off"
    for root, sizes in ((a, [3, 4000]), (b, []), (off, [9])):
        day = root / "history-backup" / "2024-01-02" / "sub"
        day.mkdir(parents=True)
        for i, size in enumerate(sizes):
            (day / f"f{i}").write_bytes(b"x" * size)
    (a / "history-backup" / "link").symlink_to("/etc/passwd")  # counted as itself, not followed
    (a / "live.txt").write_bytes(b"y" * 100)  # not history
    cfg = DaemonConfig(
        modules={
            "a": ModuleConfig(name="a", path=a),
            "b": ModuleConfig(name="b", path=b, history_dir="history-backup"),
            "off": ModuleConfig(name="off", path=off, history=False),
            "none": ModuleConfig(name="none", path=tmp_path / "absent"),
        }
    )
    clock = [0.0]
    registry = CollectorRegistry()
    registry.register(HistoryCollector(cfg, ttl_s=60, clock=lambda: clock[0]))
    got = samples(registry)
    link_size = len("/etc/passwd")
    assert got[("backupd_history_bytes", (("module", "a"),))] == 4003 + link_size
    assert got[("backupd_history_files", (("module", "a"),))] == 3
    assert got[("backupd_history_bytes", (("module", "b"),))] == 0
    assert got[("backupd_history_bytes", (("module", "none"),))] == 0
    assert ("backupd_history_bytes", (("module", "off"),)) not in got
    (a / "history-backup" / "2024-01-02" / "more").write_bytes(b"z" * 7)
    assert (
        samples(registry)[("backupd_history_bytes", (("module", "a"),))] == 4003 + link_size
    )  # cached
    clock[0] = 61.0
    assert samples(registry)[("backupd_history_bytes", (("module", "a"),))] == 4010 + link_size


def test_history_usage_of_missing_dir_is_zero(tmp_path):
    assert history_usage(tmp_path / "nothing") == (0, 0)


def test_exporter_port_in_use_is_a_config_error():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: cannot listen"):
            metrics.MetricsExporter(("127.0.0.1", port), CollectorRegistry())


def _free_port() -> int:
    from tests.helpers import free_port

    return free_port()


def test_server_exporter_cleans_up_its_directory(tmp_path):
    cfg = DaemonConfig(modules={"m": ModuleConfig(name="m", path=tmp_path)})
    exporter = metrics.start_server_exporter(f"127.0.0.1:{_free_port()}", cfg)
    path = Path(os.environ[metrics.MULTIPROC_ENV])
    try:
        assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700
        with urllib.request.urlopen(
            f"http://127.0.0.1:{exporter.port}/metrics", timeout=5
        ) as reply:
            assert b"backupd_history_bytes" in reply.read()
    finally:
        exporter.close()
    assert not path.exists() and metrics.MULTIPROC_ENV not in os.environ and metrics._SERVER is None


def test_a_forked_child_drops_the_exporter_socket(tmp_path):
    cfg = DaemonConfig(modules={})
    exporter = metrics.start_server_exporter(f"127.0.0.1:{_free_port()}", cfg)
    sock = exporter.httpd.socket
    try:

        def child():
            metrics.after_fork()
            assert sock.fileno() == -1

        run_worker(child)
        metrics.after_fork()  # in the listener itself: nothing happens
        assert sock.fileno() != -1
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.status == 200
    finally:
        exporter.close()
    assert metrics._EXPORTER_PID is None
