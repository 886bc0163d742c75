"""Tests of the test helpers themselves, against the real stock rsync daemon.

They prove the fixtures (clients, forced protocols, stock_rsyncd, secrets) and
the tree comparison work, so a failing interop test points at backupd.
"""

from __future__ import annotations

import os
import random
import re
import socket
import stat
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tests.helpers import (
    Dir,
    File,
    ServerStartError,
    Symlink,
    assert_trees_equal,
    free_port,
    make_tree,
    scan_tree,
)

T0 = 1_600_000_000  # 2020-09-13, whole seconds
NS = 123_456_789


def sample_spec() -> dict:
    """Files (empty, 300 kB, sub-second mtimes), modes, dirs, symlinks, odd names."""
    rng = random.Random(7)
    return {
        "empty": File(b"", mode=0o600, mtime_ns=T0 * 10**9 + NS),
        "hello.txt": File("hello\n", mode=0o644, mtime=T0 + 1.5),
        "big.bin": File(rng.randbytes(300_000), mode=0o640, mtime=T0 + 2),
        "run.sh": File(b"#!/bin/sh\n", mode=0o755, mtime_ns=(T0 + 3) * 10**9 + NS),
        "sub": Dir(
            {
                "deep": Dir({"x": File(b"x" * 5000, mtime=T0 + 4)}, mode=0o750, mtime=T0 + 5),
                "link": Symlink("../hello.txt", mtime=T0 + 6),
                "dangling": Symlink(b"nowhere/at/all", mtime=T0 + 7),
            },
            mode=0o755,
            mtime_ns=(T0 + 8) * 10**9 + NS,
        ),
        "caf\u00e9 name": File(b"utf-8 name", mtime=T0 + 10),
        b"bad\xffname": File(b"not utf-8", mtime=T0 + 11),
    }


def build(root, spec=None, root_mtime_ns=(T0 + 9) * 10**9):
    make_tree(root, sample_spec() if spec is None else spec)
    os.chmod(root, 0o755)
    os.utime(root, ns=(root_mtime_ns, root_mtime_ns))
    return root


# ---------------------------------------------------------------- real rsync


def test_push_to_stock_rsyncd_copies_tree_exactly(rsync_client, stock_rsyncd, tmp_path):
    src, module = build(tmp_path / "src"), tmp_path / "module"
    module.mkdir()
    server = stock_rsyncd({"backup": {"path": module, "read_only": False}})

    done = rsync_client.run("-a", "--debug=proto", f"{src}/", server.url("backup"))

    assert done.returncode == 0, done.stderr
    negotiated = re.search(r"Protocol versions: remote=\d+, negotiated=(\d+)", done.stdout)
    assert negotiated, done.stdout
    assert int(negotiated[1]) == (rsync_client.protocol or rsync_client.max_protocol)
    assert_trees_equal(
        src, module, mtime_precision_ns=rsync_client.mtime_precision_ns, check_owner=True
    )
    sent_ns = os.stat(module / "empty").st_mtime_ns
    assert sent_ns == (T0 * 10**9 if rsync_client.protocol == 30 else T0 * 10**9 + NS)


def test_pull_from_stock_rsyncd(rsync_client, stock_rsyncd, tmp_path):
    module, dest = build(tmp_path / "module"), tmp_path / "dest"
    server = stock_rsyncd({"data": {"path": module}})  # read only by default

    done = rsync_client.run("-a", server.url("data"), f"{dest}/")

    assert done.returncode == 0, done.stderr
    assert_trees_equal(module, dest, mtime_precision_ns=rsync_client.mtime_precision_ns)


@pytest.mark.parametrize("version", ["3.5.0", "3.2.7"])
def test_password_is_given_only_explicitly(
    version, rsync_clients, stock_rsyncd, tmp_path, monkeypatch
):
    client = rsync_clients[version]
    src, module = build(tmp_path / "src", {"f": b"data"}), tmp_path / "module"
    module.mkdir()
    server = stock_rsyncd(
        {"backup": {"path": module, "read_only": False, "auth_users": "alice"}},
        secrets={"alice": "s3cret"},
    )
    secrets_file = server.config_path.parent / "rsyncd.secrets"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    url = server.url("backup", user="alice")
    monkeypatch.setenv("RSYNC_PASSWORD", "s3cret")  # must not leak into run()

    no_password = client.run("-a", f"{src}/", url)
    wrong = client.run("-a", f"{src}/", url, password="wrong")
    right = client.run("-a", f"{src}/", url, password="s3cret")

    for refused in (no_password, wrong):
        assert refused.returncode == 5, refused.stderr
        assert "@ERROR: auth failed on module backup" in refused.stderr
    assert right.returncode == 0, right.stderr
    assert (module / "f").read_bytes() == b"data"


def test_server_that_cannot_listen_is_reported_with_its_log(stock_rsyncd, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ServerStartError, match="Address already in use") as caught:
            stock_rsyncd({"m": {"path": tmp_path}}, port=port)
    assert "exited with" in str(caught.value)


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 <= port <= 65535


# ---------------------------------------------------------------- make_tree


def test_make_tree_builds_what_the_spec_says(tmp_path):
    root = make_tree(tmp_path / "t", sample_spec())

    st = os.lstat(root / "run.sh")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o755, (T0 + 3) * 10**9 + NS)
    assert os.lstat(root / "hello.txt").st_mtime_ns == (T0 + 1) * 10**9 + 500_000_000
    assert (root / "big.bin").stat().st_size == 300_000
    assert os.readlink(root / "sub" / "link") == "../hello.txt"
    assert os.lstat(root / "sub" / "dangling").st_mtime_ns == (T0 + 7) * 10**9
    sub = os.lstat(root / "sub")  # set after its entries were made
    assert (stat.S_IMODE(sub.st_mode), sub.st_mtime_ns) == (0o755, (T0 + 8) * 10**9 + NS)
    assert stat.S_IMODE(os.lstat(root / "sub" / "deep").st_mode) == 0o750
    assert (root / "caf\u00e9 name").read_bytes() == b"utf-8 name"
    with open(os.path.join(os.fsencode(root), b"bad\xffname"), "rb") as odd:
        assert odd.read() == b"not utf-8"


# ---------------------------------------------------------------- assert_trees_equal


def _mutate_content(root):
    (root / "hello.txt").write_bytes(b"HELLO\n")  # same size
    os.utime(root / "hello.txt", ns=(int((T0 + 1.5) * 10**9),) * 2)


def _mutate_symlink(root):
    os.unlink(root / "sub" / "link")
    os.symlink("../big.bin", root / "sub" / "link")
    os.utime(root / "sub" / "link", ns=((T0 + 6) * 10**9,) * 2, follow_symlinks=False)


def _restore_sub_mtime(root):
    os.utime(root / "sub", ns=(((T0 + 8) * 10**9 + NS),) * 2)


MUTATIONS = {
    "content": (_mutate_content, r"'hello.txt': content differs"),
    "mode": (lambda r: os.chmod(r / "run.sh", 0o700), r"'run.sh': mode differs: 0755 vs 0700"),
    "mtime": (
        lambda r: os.utime(r / "big.bin", ns=((T0 + 2) * 10**9 + 1,) * 2),
        r"'big.bin': mtime differs",
    ),
    "symlink": (
        lambda r: (_mutate_symlink(r), _restore_sub_mtime(r)),
        r"'sub/link': symlink target differs: b'../hello.txt' vs b'../big.bin'",
    ),
    "missing": (
        lambda r: (
            os.unlink(r / "sub" / "deep" / "x"),
            os.utime(r / "sub" / "deep", ns=((T0 + 5) * 10**9,) * 2),
        ),
        r"b'sub/deep/x': only in a",
    ),
    "kind": (
        lambda r: (
            os.unlink(r / "empty"),
            os.mkdir(r / "empty"),
            os.utime(r, ns=((T0 + 9) * 10**9,) * 2),
        ),
        r"b'empty': file vs dir",
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_assert_trees_equal_detects(name, tmp_path):
    a, b = build(tmp_path / "a"), build(tmp_path / "b")
    assert_trees_equal(a, b)  # identical before
    mutate, message = MUTATIONS[name]

    mutate(b)

    with pytest.raises(AssertionError, match=message) as caught:
        assert_trees_equal(a, b)
    assert len(str(caught.value).splitlines()) == 2  # header + exactly this difference


def test_mtime_precision_and_ignored_history(tmp_path):
    a, b = build(tmp_path / "a"), build(tmp_path / "b")
    os.utime(b / "run.sh", ns=((T0 + 3) * 10**9,) * 2)  # sub-second part lost (protocol 30)
    make_tree(b, {"history-backup": {"2026-01-01": {"run.sh": b"old"}}})
    os.utime(b, ns=((T0 + 9) * 10**9,) * 2)

    assert_trees_equal(a, b, mtime_precision_ns=10**9)
    with pytest.raises(AssertionError, match="'run.sh': mtime differs"):
        assert_trees_equal(a, b)
    with pytest.raises(AssertionError, match="history-backup': only in b"):
        assert_trees_equal(a, b, ignore=(), mtime_precision_ns=10**9)


def test_scan_tree_never_follows_symlinks(tmp_path):
    root = make_tree(tmp_path / "t", {"d": {"f": b"1"}, "ld": Symlink("d")})

    entries = scan_tree(root)

    assert set(entries) == {b".", b"d", b"d/f", b"ld"}
    assert entries[b"ld"].kind == "symlink"


# ---------------------------------------------------------------- conf/ examples


def test_example_configs_load_and_say_the_same():
    # imported here: a broken reader fails this test, not the helper tests
    from backupd.config.rsyncd_conf import load_rsyncd_conf
    from backupd.config.yaml_conf import load_yaml_conf

    conf = Path(__file__).resolve().parent.parent / "conf"
    from_conf = load_rsyncd_conf(conf / "rsyncd.conf")
    from_yaml = load_yaml_conf(conf / "backupd.yaml")

    assert from_conf.warnings == () and from_yaml.warnings == ()
    assert asdict(replace(from_conf, source=None)) == asdict(replace(from_yaml, source=None))
    backup = from_conf.modules["backup"]
    assert (backup.read_only, backup.history, backup.history_keep_days) == (False, True, 30)
    assert [u.name for u in backup.auth_users] == ["backup", "reader"]
