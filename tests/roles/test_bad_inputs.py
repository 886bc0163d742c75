"""Inputs that used to end a push in "internal error" (issue 15.9), one test each.

Each is a unit-level reproduction of what the fuzzer (tests/interop/fuzz.py)
or a crafted stream sent; the interop fuzzer covers them end to end.
"""

from __future__ import annotations

import pwd
import threading

import pytest

from backupd.errors import ExitCode, RsyncError
from backupd.roles import push
from backupd.roles.owners import lookup_id

ROOT = pwd.getpwuid(0).pw_name.encode()


def test_a_nul_in_an_id_list_name_ends_the_name_as_in_rsync():
    # rsync uidlist.c recv_user_name: the name is a C string, the NUL ends it
    assert lookup_id(pwd.getpwnam, "pw_uid", ROOT + b"\0junk") == 0
    assert lookup_id(pwd.getpwnam, "pw_uid", b"\0" + ROOT) is None  # empty name: no mapping
    assert lookup_id(pwd.getpwnam, "pw_uid", b"no-such-user-\0xyz") is None


class _Generator:
    """Stands in for roles.generator.Generator: a thread that uses the module until stopped."""

    def __init__(self) -> None:
        self.error = None
        self.stopped = threading.Event()
        self.used_after_stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(0.001):
            pass

    def stop(self, timeout_s: float = 5.0) -> bool:
        self.stopped.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()


class _FailingReceiver:
    def __init__(self, exc: BaseException, generator: _Generator) -> None:
        self.exc, self.generator = exc, generator

    def run(self) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [RsyncError("received data for ndx 1, which was never requested",
                                            ExitCode.PROTOCOL), ValueError("a bug in the receiver")])
def test_a_receiver_error_stops_the_generator_before_the_push_returns(exc):
    generator = _Generator()
    with pytest.raises(type(exc)):
        push._run_both(generator, _FailingReceiver(exc, generator), session=None)
    assert generator.stopped.is_set() and not generator._thread.is_alive()


class _Outbox:
    def __init__(self) -> None:
        self.msgs: list[tuple[int, bytes]] = []

    def send_msg(self, code, payload: bytes) -> None:
        self.msgs.append((code, payload))


def test_a_path_escape_in_the_generator_is_a_clean_session_error():
    """A parent turned symlink before the redo pass: tree.lstat raises PathEscape in the generator thread."""
    from backupd.errors import PathEscape
    from backupd.protocol.constants import MsgCode
    from backupd.roles.generator import Generator

    gen = Generator.__new__(Generator)  # only what _run touches
    gen.out, gen.error, gen.log = _Outbox(), None, None

    def redo_pass() -> None:
        raise PathEscape("module m: d/a.bin: refused, symlinked parent d")

    gen._generate = redo_pass
    gen._run()
    assert isinstance(gen.error, RsyncError) and gen.error.exit_code == ExitCode.FILESELECT
    assert [code for code, _ in gen.out.msgs] == [MsgCode.ERROR, MsgCode.ERROR_EXIT]
    assert b"symlinked parent d" in gen.out.msgs[0][1]


@pytest.mark.parametrize("option", ["--compress-choice", "--checksum-choice", "--max-delete", "--timeout"])
def test_a_value_option_without_its_value_is_refused_in_popt_words(option):
    from backupd.protocol.server_args import parse_server_args_lenient

    opts, error = parse_server_args_lenient([b"--server", b"-tre.LsfxCIvu", option.encode(), b".", b"m/"])
    # a daemon ends every parse_arguments() failure with RERR_UNSUPPORTED (clientserver.c rsync_module)
    assert isinstance(error, RsyncError) and error.exit_code == ExitCode.UNSUPPORTED
    assert str(error) == f"rsync: on remote machine: {option}: missing argument"
    assert opts.paths == [b"m/"]


def test_received_names_are_cleaned_as_rsync_clean_fname():
    from backupd.protocol.flist import clean_wire_name

    cases = {b"x//y": b"x/y", b"sub/": b"sub", b"./a": b"a", b"a/./b": b"a/b", b"a/.": b"a",
             b"a/./": b"a", b".": b".", b"a//": b"a", b"..//x": b"../x"}  # '..' is left to check_wire_name
    assert {name: clean_wire_name(name) for name in cases} == cases
